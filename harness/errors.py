"""Errors the harness reports to its user as one line, never as a traceback.

Every error a user can cause (bad file, bad size, no QEMU, ...) is a `HarnessError`;
the CLI prints `error: <message>` and exits non-zero. Messages say what is wrong and
what to do about it.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A problem the user can act on; printed as one line by the CLI."""

    exit_code = 2


class QemuNotFound(HarnessError):
    """No usable qemu-system-xtensa with the esp32 machine."""


class ImageError(HarnessError):
    """A firmware or flash image the harness cannot use as asked."""


class DeviceTimeout(HarnessError):
    """The serial port did not show what was expected in time."""

    exit_code = 3


class QemuExited(HarnessError):
    """QEMU went away while the harness was still talking to it."""

    exit_code = 3


class FirmwareCrash(HarnessError):
    """The guest printed a fatal error (Guru Meditation, abort())."""

    exit_code = 3


class BootLoop(HarnessError):
    """The ROM reset banner kept repeating without MicroPython coming up."""

    exit_code = 3

    def __init__(self, message: str, reasons: list[str]):
        super().__init__(message)
        self.reasons = reasons


class DeviceError(HarnessError):
    """Code run on the device raised; carries the device's traceback."""

    exit_code = 1

    def __init__(self, traceback: str, output: str = ""):
        self.traceback = traceback.strip()
        self.output = output
        last = self.traceback.splitlines()[-1] if self.traceback else "unknown error"
        super().__init__(f"device raised {last}")

    def __str__(self) -> str:
        return f"{self.args[0]}\n{self.traceback}"
