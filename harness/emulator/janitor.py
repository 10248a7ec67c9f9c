"""Temporary folders that are removed even when the harness is SIGKILLed.

A harness process that dies by SIGKILL runs no cleanup code, so its run folders (a
16MB flash copy each) would stay in /tmp. The janitor is a tiny helper process started
on the first temporary folder: the harness writes each folder's path to the janitor's
stdin; when that pipe closes (the harness exited, however it died), the janitor waits
for the QEMUs of the run to die too (the kernel kills them: PR_SET_PDEATHSIG) and
removes every folder it was told about. On a normal exit the harness removes its
folders itself and the janitor finds nothing left to do.
"""

from __future__ import annotations

import atexit
import contextlib
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# Runs in the helper: collect paths until EOF, give QEMU a moment to die, remove them.
_SCRIPT = """
import shutil, sys, time
paths = [line.rstrip("\\n") for line in sys.stdin]
time.sleep(0.5)
for path in paths:
    shutil.rmtree(path, ignore_errors=True)
"""

_lock = threading.Lock()
_helper: subprocess.Popen[str] | None = None


def mkdtemp(prefix: str) -> Path:
    """tempfile.mkdtemp(), removed by the janitor should this process die without cleanup."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _watch(path)
    return path


def _watch(path: Path) -> None:
    global _helper
    with _lock:
        if _helper is None or _helper.poll() is not None:
            _helper = subprocess.Popen(
                [sys.executable, "-c", _SCRIPT],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,  # not killed with our process group on Ctrl-C
            )
            atexit.register(_close)
        assert _helper.stdin is not None
        with contextlib.suppress(OSError):
            _helper.stdin.write(f"{path}\n")
            _helper.stdin.flush()


def _close() -> None:
    """Normal exit: let the helper sweep whatever is left, and do not wait for it."""
    with _lock:
        if _helper is not None and _helper.stdin is not None:
            with contextlib.suppress(OSError):
                _helper.stdin.close()
