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
    """QEMU went away while the harness was still talking to it.

    `qemu_bug` is set when QEMU died of its own assertion, not of the firmware or a
    signal: the one failure a retry policy (`--retries`) may rerun.
    """

    exit_code = 3

    def __init__(self, message: str, qemu_bug: bool = False):
        super().__init__(message)
        self.qemu_bug = qemu_bug


class FirmwareCrash(HarnessError):
    """The guest printed a fatal error (Guru Meditation, abort())."""

    exit_code = 3


class BootLoop(HarnessError):
    """The ROM reset banner kept repeating without MicroPython coming up."""

    exit_code = 3

    def __init__(self, message: str, reasons: list[str], host_load: bool = False):
        super().__init__(message)
        self.reasons = reasons
        self.host_load = host_load  # watchdog resets while the host was saturated

    @property
    def watchdog(self) -> bool:
        """Every reset after power-on came from a watchdog (what host starvation causes)."""
        later = [r for r in self.reasons if r != "POWERON_RESET"]
        return bool(later) and all("WDT" in r for r in later)


class UnexpectedReset(HarnessError):
    """The guest reset when nothing asked it to (panic reboot, watchdog)."""

    exit_code = 3

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason  # the ROM's name for it: TG1WDT_SYS_RESET, SW_CPU_RESET, ...
        self.watchdog = "WDT" in reason


class UnexpectedOutput(HarnessError):
    """The guest printed something a scenario said must not appear."""

    exit_code = 1


class StepFailed(HarnessError):
    """A scenario step's expectation was not met (the message names step and evidence)."""

    exit_code = 1


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
