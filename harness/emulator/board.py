"""The board: one emulated ESP32 on one flash file, whatever powers it and whoever talks to it.

`Board` is the interface the rest of the harness uses: power on (the console is wired
before the guest runs, so not one bootloader line is lost), hard reset (the EN pin),
power cut (the emulation stops at once, the flash keeps what was written), the flash
file, the serial log, where the CPUs are, and the served port when there is one. Two
implementations:

- `QemuBoard`: one QEMU at a time, its UART0 read by the harness's console directly.
- `ServedBoard`: the UART served as a pty and an RFC2217 port (harness.emulator.serialport)
  for the user's own tools, whose DTR/RTS restart QEMU on the same flash, in download
  mode when GPIO0 is low, as a USB board's auto-reset circuit does. The ROM's download
  mode is a strap that Espressif's QEMU fixes when the machine is created (`qom-set` is
  refused later), so entering it means a new QEMU; the old one is asked to quit first,
  so the flash writes esptool made reach the file. The relay keeps the user's client,
  the harness's console and the serial log across every restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import FlashTraceUnavailable, HarnessError, QemuExited
from ..flash.distinct import Seen
from .console import SerialLog
from .flashtrace import EVENTS, READ_EVENTS, TRACE_FILE, TraceFile
from .qemu import CpuState, Machine, MachineSetup
from .serialport import SerialRelay

Attach = Callable[[socket.socket], None]


@dataclass(frozen=True)
class ServedPort:
    """Where the user's tools reach a served board."""

    pty: str
    rfc2217: str


class Board(Protocol):
    """One emulated ESP32 on one flash file."""

    flash: Path
    run_dir: Path
    log: SerialLog
    relays_log: bool  # the board writes what the UART prints into `log` itself

    def power_on(self, attach: Attach) -> None:
        """Start the guest; `attach(console_socket)` runs before its first instruction."""

    def hard_reset(self) -> None:
        """EN pulled low and released: the chip restarts from the ROM."""

    def power_cut(self) -> None:
        """The power goes: the emulation stops at once, with no clean shutdown."""

    def record_flash(self, on: bool) -> TraceFile:
        """Start (True) or stop reporting the flash chip's operations; the trace since the
        last start (harness.emulator.flashtrace)."""

    def record_reads(self, on: bool) -> None:
        """From the next power-on, report (True) or not what the guest reads of the flash
        and the operations it makes on it."""

    def seen(self) -> Seen:
        """What the guest read of the flash since this power-on, and the operations it
        made (`record_reads`)."""

    def pause(self) -> None:
        """Stop the emulated CPUs; the flash file then holds every write made so far."""

    def check_alive(self, during: str, wait: float = 0.0) -> None:
        """Raise QemuExited when the emulation is gone (with QEMU's own last words)."""

    def cpu_states(self) -> list[CpuState]:
        """Each emulated CPU's PC and interrupt level; empty when QEMU cannot say."""

    def vm_status(self) -> str | None:
        """QEMU's run state ("running", "paused", ...); None when QEMU cannot say."""

    def read_words(self, address: int, count: int) -> list[int] | None:
        """32-bit words of the guest's physical memory (device registers through their
        read ops); None when QEMU cannot say."""

    def guest_resets(self) -> int:
        """Resets the guest made itself since the last call (or since power-on)."""

    @property
    def data(self) -> socket.socket:
        """UART1: a byte pipe for payloads."""

    @property
    def port(self) -> ServedPort | None:
        """The pty and RFC2217 endpoints of a served board; None otherwise."""

    @property
    def power_cycles(self) -> int:
        """Restarts by the user's tools (DTR/RTS) so far."""

    @property
    def in_download_mode(self) -> bool:
        """The ROM waits for esptool (GPIO0 was low at the last reset)."""

    def client(self) -> str | None:
        """Who has the served port now (`pty`, `rfc2217`); None: nobody, or not served."""

    def close(self) -> None:
        """Stop everything and reap QEMU; safe to call more than once."""


class QemuBoard:
    """The board as one QEMU at a time; the console reads QEMU's UART0 socket itself."""

    relays_log = False

    def __init__(self, setup: MachineSetup, flash: Path, run_dir: Path) -> None:
        self.setup, self.flash, self.run_dir = setup, flash, run_dir
        self.log = SerialLog(run_dir / "serial.log")
        self.machine: Machine | None = None
        self.trace = TraceFile(run_dir / TRACE_FILE)
        self.reading: TraceFile | None = None  # what a power-on reads, when recorded

    def power_on(self, attach: Attach) -> None:
        if self.machine is not None and self.machine.exit_status() is None:
            raise HarnessError("the board is already powered on: cut the power first")
        machine = self.machine = Machine(self.setup, self.flash, self.run_dir)

        def wired(sock: socket.socket) -> None:  # before the guest's first instruction
            attach(sock)
            if self.reading is not None:
                self.reading.mark()  # QEMU opened the trace anew: from here
                machine.trace_flash(True, READ_EVENTS + EVENTS)

        machine.start(wired)

    def record_reads(self, on: bool) -> None:
        if not on and self.reading is not None:  # tens of MB a power-on (the SHA engine's
            self.reading.path.unlink(missing_ok=True)  # MMIO writes): read, not kept
        self.reading = TraceFile(self.trace.path) if on else None

    def seen(self) -> Seen:
        if self.reading is None:
            raise HarnessError("the board is not recording what it reads")
        with contextlib.suppress(HarnessError):  # gone already: its trace is complete
            self.pause()
        size = self.flash.stat().st_size
        return Seen(self.reading.reads(size), tuple(self.reading.ops(size)))

    def _running(self) -> Machine:
        if self.machine is None:
            raise HarnessError("the board is not powered on")
        return self.machine

    def hard_reset(self) -> None:
        self._running().reset()

    def power_cut(self) -> None:
        if self.machine is not None:
            self.machine.stop(graceful=False)
            self.log.note("power cut")

    def record_flash(self, on: bool) -> TraceFile:
        machine = self._running()
        if on:
            self.trace.mark()
        machine.trace_flash(on)
        return self.trace

    def pause(self) -> None:
        self._running().pause()

    def check_alive(self, during: str, wait: float = 0.0) -> None:
        if self.machine is not None:
            self.machine.check_alive(during, wait)

    def cpu_states(self) -> list[CpuState]:
        return self.machine.cpu_states() if self.machine is not None else []

    def vm_status(self) -> str | None:
        return self.machine.vm_status() if self.machine is not None else None

    def read_words(self, address: int, count: int) -> list[int] | None:
        return self.machine.read_words(address, count) if self.machine is not None else None

    def guest_resets(self) -> int:
        return self.machine.guest_resets() if self.machine is not None else 0

    @property
    def data(self) -> socket.socket:
        sock = self._running().data
        if sock is None:
            raise HarnessError("the board's UART1 is not wired")
        return sock

    @property
    def port(self) -> ServedPort | None:
        return None

    @property
    def power_cycles(self) -> int:
        return 0

    @property
    def in_download_mode(self) -> bool:
        return False

    def client(self) -> str | None:
        return None

    def close(self) -> None:
        if self.machine is not None:
            self.machine.stop()
        with contextlib.suppress(ValueError):
            self.log.close()


# What the ROM prints once it has started: the bootloader it loaded (normal boot), or
# the boot mode line of download mode. Seen: under host load, a restarted QEMU that
# printed nothing after its first lines (or garbage) and never went on.
SIGN_OF_LIFE = {False: re.compile(r"^entry 0x"), True: re.compile(r"boot:0x[0-9a-f]+ \(UART_BOOT")}
LIFE_WITHIN = 8.0
EXTRA_PULSES = 2


class ServedBoard:
    """QEMU on one flash file, any number of power cycles, one serial relay."""

    relays_log = True

    def __init__(self, setup: MachineSetup, flash: Path, run_dir: Path, *, download: bool) -> None:
        self.setup, self.flash, self.run_dir = setup, flash, run_dir
        self.download = download
        self.log = SerialLog(run_dir / "serial.log")
        self.relay = SerialRelay(self.log, self._restart, self._watch)
        self._awaiting: tuple[int, float, int] | None = None  # (log mark, deadline, pulses)
        self.machine: Machine | None = None
        self.cycles = 0  # power cycles since start (esptool's resets)
        self._lock = threading.RLock()
        self.failure: BaseException | None = None  # a restart that did not work
        self.trace = TraceFile(run_dir / TRACE_FILE)
        self.recording = False

    def power_on(self, attach: Attach) -> None:
        if not self.relay.started:
            attach(self.relay.console_socket)
            self._boot(self.download)
            self.relay.start()
        else:
            self._boot(False)

    def _boot(self, download: bool, pulses: int = 0) -> None:
        self._awaiting = (len(self.log.lines), time.monotonic() + LIFE_WITHIN, pulses)
        setup = dataclasses.replace(self.setup, download=download)
        machine = Machine(setup, self.flash, self.run_dir)
        self.machine, self.download = machine, download

        def attach(sock: socket.socket) -> None:  # before the guest's first instruction
            self.relay.attach(sock)
            if self.recording:
                machine.trace_flash(True)

        machine.start(attach)

    def power_cycle(self, download: bool, pulses: int = 0) -> None:
        """EN pulsed: a new QEMU on the same flash, in download mode when GPIO0 was low."""
        with self._lock:
            self.log.note(f"EN pulsed: restart in {'download' if download else 'normal'} mode")
            self.relay.attach(None)
            if self.machine is not None:
                self.machine.stop(graceful=True)
            self.cycles += 1
            if self.recording:
                self.trace.handover(self.run_dir / TRACE_FILE.replace(".", f".{self.cycles}.", 1))
            self._boot(download, pulses)

    def hard_reset(self) -> None:
        """EN pulled by the harness (not a client): the current QEMU resets in place."""
        with self._lock:
            self.log.note("EN pulsed by the harness: hard reset")
            self._running().reset()

    def power_cut(self) -> None:
        with self._lock:
            self.relay.attach(None)
            if self.machine is not None:
                self.machine.stop(graceful=False)
            self.log.note("power cut")

    def record_flash(self, on: bool) -> TraceFile:
        """Recorded across the restarts the user's tools make: each new QEMU has the
        events on before its first instruction, and the trace goes on in a new file."""
        with self._lock:
            if on:
                self.trace.mark()
            self._running().trace_flash(on)
            self.recording = on
        return self.trace

    def record_reads(self, on: bool) -> None:
        if on:
            raise FlashTraceUnavailable("a served board's power-ons are not traced for what "
                                        "they read")  # fmt: skip

    def seen(self) -> Seen:
        raise FlashTraceUnavailable("a served board does not record what it reads")

    def pause(self) -> None:
        self._running().pause()

    def _running(self) -> Machine:
        if self.machine is None:
            raise HarnessError("the board has no QEMU running")
        return self.machine

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

    def cpu_states(self) -> list[CpuState]:
        with self._lock:
            machine = self.machine
        return machine.cpu_states() if machine is not None else []

    def vm_status(self) -> str | None:
        with self._lock:
            machine = self.machine
        return machine.vm_status() if machine is not None else None

    def read_words(self, address: int, count: int) -> list[int] | None:
        with self._lock:
            machine = self.machine
        return machine.read_words(address, count) if machine is not None else None

    def guest_resets(self) -> int:
        with self._lock:
            machine = self.machine
        return machine.guest_resets() if machine is not None else 0

    @property
    def data(self) -> socket.socket:
        sock = self._running().data
        if sock is None:
            raise HarnessError("the board's UART1 is not wired")
        return sock

    @property
    def port(self) -> ServedPort | None:
        return ServedPort(self.relay.pty_path, self.relay.rfc2217_url)

    @property
    def power_cycles(self) -> int:
        return self.cycles

    @property
    def in_download_mode(self) -> bool:
        return self.download

    def client(self) -> str | None:
        return self.relay.owner

    def close(self) -> None:
        """Stop the relay, then QEMU (gracefully: the flash file is evidence)."""
        self.relay.close()
        with self._lock:
            if self.machine is not None:
                self.machine.stop(graceful=True)
        with contextlib.suppress(ValueError):
            self.log.close()
