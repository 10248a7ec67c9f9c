"""An emulated board served as a serial port, restarted by its reset circuit like a USB one.

The ROM's download mode is a strap that Espressif's QEMU fixes when the machine is
created (`qom-set` is refused afterwards), so entering it means a new QEMU on the same
flash file with GPIO0 strapped low, and leaving it a new QEMU without: `power_cycle()`.
The old QEMU is asked to quit first, so the flash writes esptool made reach the file.
The relay (harness.serialport) keeps the user's client, the harness's console and the
serial log across every restart.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from pathlib import Path

from .console import SerialLog
from .errors import HarnessError, QemuExited
from .qemu import Machine
from .serialport import SerialRelay

# What the ROM prints once it has started: the bootloader it loaded (normal boot), or
# the boot mode line of download mode. Seen: under host load, a restarted QEMU that
# printed nothing after its first lines (or garbage) and never went on.
SIGN_OF_LIFE = {False: re.compile(r"^entry 0x"), True: re.compile(r"boot:0x[0-9a-f]+ \(UART_BOOT")}
LIFE_WITHIN = 8.0
EXTRA_PULSES = 2


class Board:
    """QEMU on one flash file, any number of power cycles, one serial relay."""

    def __init__(
        self,
        qemu: Path,
        flash: Path,
        run_dir: Path,
        *,
        psram: bool,
        watchdogs: bool,
        download: bool = False,
    ):
        self.qemu, self.flash, self.run_dir = qemu, flash, run_dir
        self.psram, self.watchdogs, self.download = psram, watchdogs, download
        self.log = SerialLog(run_dir / "serial.log")
        self.relay = SerialRelay(self.log, self._restart, self._watch)
        self._awaiting: tuple[int, float, int] | None = None  # (log mark, deadline, pulses)
        self.machine: Machine | None = None
        self.cycles = 0  # power cycles since start (esptool's resets, --download)
        self._lock = threading.RLock()
        self.failure: BaseException | None = None  # a restart that did not work

    def start(self) -> None:
        self._boot(self.download)
        self.relay.start()

    def _boot(self, download: bool, pulses: int = 0) -> None:
        self._awaiting = (len(self.log.lines), time.monotonic() + LIFE_WITHIN, pulses)
        machine = Machine(
            self.qemu, self.flash, self.run_dir, psram=self.psram, watchdogs=self.watchdogs,
            download=download, data_channel=True,
        )  # fmt: skip
        self.machine, self.download = machine, download
        machine.start(self.relay.attach)

    def power_cycle(self, download: bool, pulses: int = 0) -> None:
        """EN pulsed: a new QEMU on the same flash, in download mode when GPIO0 was low."""
        with self._lock:
            self.log.note(f"EN pulsed: restart in {'download' if download else 'normal'} mode")
            self.relay.attach(None)
            if self.machine is not None:
                self.machine.stop(graceful=True)
            self.cycles += 1
            self._boot(download, pulses)

    def _watch(self) -> None:
        """From the relay's loop: a restart that shows no sign of life is pulsed again, as
        one presses a board's reset button again (a few times at most, each noted)."""
        if self._awaiting is None:
            return
        mark, deadline, pulses = self._awaiting
        if any(SIGN_OF_LIFE[self.download].search(line) for line in self.log.lines[mark:]):
            self._awaiting = None
        elif time.monotonic() > deadline and pulses < EXTRA_PULSES:
            self.log.note(f"no sign of life {LIFE_WITHIN:g}s after the restart: EN pulsed again")
            try:
                self.power_cycle(self.download, pulses + 1)
            except (HarnessError, OSError) as exc:
                self.failure, self._awaiting = exc, None
        elif time.monotonic() > deadline:
            self._awaiting = None

    def _restart(self, download: bool) -> None:
        """From the relay's thread: a failure is kept for the harness to report."""
        try:
            self.power_cycle(download)
        except (HarnessError, OSError) as exc:
            self.failure = exc

    def check_alive(self, during: str, wait: float = 0.0) -> None:
        """QemuExited when the current QEMU is gone (and no restart is under way)."""
        if self.failure is not None:
            raise QemuExited(f"the board could not restart during {during}: {self.failure}")
        with self._lock:
            machine = self.machine
        if machine is not None:
            machine.check_alive(during, wait)

    @property
    def console_socket(self) -> socket.socket:
        return self.relay.console_socket

    def close(self) -> None:
        """Stop the relay, then QEMU (gracefully: the flash file is evidence)."""
        self.relay.close()
        with self._lock:
            if self.machine is not None:
                self.machine.stop(graceful=True)
        with contextlib.suppress(ValueError):
            self.log.close()
