"""Run one of the user's own tools on the host against the board (mpremote, esptool, ...).

The command line is split like a shell would (no shell runs it), the harness's own
Python environment comes first on PATH (so the esptool and mpremote installed beside
the harness are found), and a command that runs past its timeout is killed with its
whole process group. Output (stdout and stderr, interleaved) is kept for the step.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import HarnessError


class CommandError(HarnessError):
    """A host command that could not run, or did not finish in time."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    output: str
    elapsed_s: float


def run(command: str, *, timeout: float, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> CommandResult:  # fmt: skip
    argv = shlex.split(command)
    if not argv:
        raise CommandError("run: the command is empty")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    full_env = {**os.environ, **(env or {}), "PATH": path}
    if shutil.which(argv[0], path=path) is None and not Path(argv[0]).is_file():
        raise CommandError(
            f"command not found: {argv[0]} (not on PATH; install it, e.g. `pip install "
            f"{argv[0]}` into the harness's environment)"
        )
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=full_env, cwd=cwd, start_new_session=True, text=True, errors="replace",
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise CommandError(
            f"{argv[0]} did not finish within {timeout:g}s and was killed: {command}"
        ) from None
    finally:
        if proc.poll() is None:  # Ctrl-C or another exception: never leave it behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return CommandResult(command, proc.returncode, output, round(time.monotonic() - start, 3))
