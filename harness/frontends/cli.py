"""`harness` command line: boot, image build, inspect, run, repro, provision, downloads,
powercut export.

Each command is a module of harness.frontends.commands, its parser beside its code;
options several commands take (`--qemu`, `--watchdogs`, the image recipe) are declared
once there (`options`). Every user mistake ends as one `error: ...` line and a non-zero
exit; SIGTERM and Ctrl-C unwind through the same cleanup as a normal exit, so no QEMU
is left behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable

from ..errors import HarnessError
from .commands import (
    boot,
    firmware,
    image,
    inspect,
    otadata,
    powercut,
    qemu,
    report,
    repro,
    scenarios,
    schema,
    upgrade,
)

# in the order `harness --help` lists them
COMMANDS = (
    boot,
    image,
    scenarios,
    repro,
    upgrade,
    qemu,
    firmware,
    report,
    schema,
    otadata,
    powercut,
    inspect,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", description="ESP32 MicroPython OTA and boot failures, reproduced in QEMU"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `with`, so QEMU is reaped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = build_parser().parse_args(argv)
    start = time.monotonic()
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except HarnessError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        detail = "\n".join(str(exc).splitlines()[1:])
        if detail:
            print(detail, file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `harness inspect FILE | head -1`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 128 + signal.SIGPIPE  # what a shell shows for a tool the pipe ended
    except OSError as exc:  # the machine's side: a full disk, a folder we may not write
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where} (check free space and permissions)",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.monotonic() - start:.1f}s", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
