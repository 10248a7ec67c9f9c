"""Errors the harness reports to its user as one line, never as a traceback.

Every error a user can cause (bad file, bad size, no QEMU, ...) is a `HarnessError`;
the CLI prints `error: <message>` and exits non-zero. Messages say what is wrong and
what to do about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .chips import Chip


class HarnessError(Exception):
    """A problem the user can act on; printed as one line by the CLI."""

    exit_code = 2


class QemuNotFound(HarnessError):
    """No usable Espressif QEMU with the chip's machine (qemu-system-xtensa, esp32)."""


class ImageError(HarnessError):
    """A firmware or flash image the harness cannot use as asked."""


class DeviceTimeout(HarnessError):
    """The serial port did not show what was expected in time."""

    exit_code = 3


class FlashTraceUnavailable(HarnessError):
    """This QEMU cannot report its flash operations (no `log` trace backend)."""


class QemuExited(HarnessError):
    """QEMU went away while the harness was still talking to it."""

    exit_code = 3


class QemuCrashed(QemuExited):
    """QEMU died of its own assertion, not of the firmware or a signal: a QEMU bug."""


class FirmwareCrash(HarnessError):
    """The guest printed a fatal error (Guru Meditation, abort())."""

    exit_code = 3


class BootLoop(HarnessError):
    """The ROM reset banner kept repeating without MicroPython coming up."""

    exit_code = 3

    def __init__(self, message: str, reasons: list[str]):
        super().__init__(message)
        self.reasons = reasons

    @staticmethod
    def of(message: str, reasons: list[str], chip: Chip) -> BootLoop:
        """A WatchdogBootLoop when every reset after power-on came from a watchdog (as the
        chip's ROM words say, harness.chips)."""
        later = [r for r in reasons if chip.reset_kind(r) != "power-on"]
        watchdog = bool(later) and all(chip.is_watchdog(r) for r in later)
        return (WatchdogBootLoop if watchdog else BootLoop)(message, reasons)


class WatchdogBootLoop(BootLoop):
    """A boot loop of watchdog resets only: what a host that starves QEMU causes."""


class UnexpectedReset(HarnessError):
    """The guest reset when nothing asked it to (panic reboot, watchdog)."""

    exit_code = 3

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason  # the ROM's name for it: TG1WDT_SYS_RESET, SW_CPU_RESET, ...

    @staticmethod
    def of(message: str, reason: str, chip: Chip) -> UnexpectedReset:
        return (WatchdogReset if chip.is_watchdog(reason) else UnexpectedReset)(message, reason)


class WatchdogReset(UnexpectedReset):
    """A watchdog reset the guest mid-step: under emulation, most often the host's doing."""


class GuestStalled(DeviceTimeout):
    """The emulated CPUs stopped making progress after the bootloader handed over: seen
    with old ESP-IDF builds when the host is shared (harness.emulator.policy.STALLS_BEFORE)."""


class UnexpectedOutput(HarnessError):
    """The guest printed something a scenario said must not appear."""

    exit_code = 1

    def __init__(self, message: str, rule: str = "", line: str = ""):
        super().__init__(message)
        self.rule = rule  # the `not_expect` pattern, as the scenario wrote it
        self.line = line  # the serial line that matched it


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
