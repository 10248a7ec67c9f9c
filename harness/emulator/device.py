"""One run of one flash image: a board, its console and REPL, and the device operations on them.

    options = BootOptions(policy=policy.decide(FirmwareFacts.read(firmware)))
    with boot(image, options) as dev:  # QEMU started paused, console wired, resumed
        dev.wait_prompt()
        print(dev.running_partition())
        booted = dev.reset("soft")      # machine.reset(), ROM banner, >>> again
    # here QEMU is dead and reaped, whatever happened inside

`Device` is the one API the rest of the harness uses to reset, wait for the prompt and
ask which partition runs, whichever `Board` it runs on; what it reads from the serial
port it reads through the console. The run folder holds the per-run copy of the flash
(`flash.bin`, which QEMU writes into), `serial.log`, `qemu-cmdline.txt` and
`qemu-stderr.log`. It is removed at the end unless the options name one (`artifacts`,
`run_dir`), where it stays as evidence.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..chips import Chip
from ..errors import HarnessError, ImageError, UnexpectedReset
from ..flash import formats
from . import hostlock, janitor, stall
from .board import Board, QemuBoard, ServedBoard
from .console import RESET_BANNER, Console, Watch, log_lines
from .policy import RunPolicy
from .qemu import MachineSetup, find_qemu, find_wifi_qemu
from .repl import Repl

ResetKind = Literal["soft", "hard"]
RUNNING = "esp32.Partition(esp32.Partition.RUNNING)"
WIFI_CONNECT = """import network, time
w = network.WLAN(network.STA_IF)
w.active(True)
if not w.isconnected():
    w.connect(%r)
t = time.ticks_ms()
while not w.isconnected():
    if time.ticks_diff(time.ticks_ms(), t) > %d:
        raise OSError('no connection to %s within %gs: status %%r' %% (w.status(),))
    time.sleep_ms(100)
print(w.ifconfig())
"""


@dataclass(frozen=True)
class BootOptions:
    """Everything a boot is told: the run policy, and where and how to run it."""

    policy: RunPolicy
    qemu: str | Path | None = None  # None: found as harness.emulator.qemu.find_qemu says
    artifacts: Path | None = None  # keep a fresh run folder inside it
    run_dir: Path | None = None  # keep exactly this run folder
    serve: bool = False  # the UART on a pty and an RFC2217 port for the user's own tools
    download: bool = False  # start in download mode (with serve: esptool's strap)
    stage: tuple[tuple[int, bytes], ...] = field(default=())  # (offset, bytes) before QEMU
    record_flash: bool = False  # the board can record its flash operations (power cuts)


@dataclass(frozen=True)
class Boot:
    """What one reset came to: the partition that runs, and what the bootloader said."""

    booted: str | None  # None: not asked (the reset did not wait for the prompt)
    log_lines: list[str]  # ESP-IDF E/W lines printed during the reset


class Device:
    """A board with its console and REPL: what steps, tests and the CLI talk to."""

    def __init__(self, board: Board, run_dir: Path, chip: Chip) -> None:
        self.board = board
        self.run_dir = run_dir
        self.chip = chip  # whose ROM words its reset banners are (harness.chips)
        self._console: Console | None = None
        self._repl: Repl | None = None

    def power_on(self) -> None:
        """Power the board on; the console (a new one when the board has a new socket) is
        reading before the guest runs its first instruction."""

        def attach(sock: socket.socket) -> None:
            watch = Watch(self.board.check_alive, lambda: stall.diagnose(self.board))
            self._console = Console(sock, self.board.log, watch,
                                    feed_log=not self.board.relays_log, chip=self.chip)  # fmt: skip
            self._repl = Repl(self._console)

        self.board.log.resets_since_up.clear()  # a boot loop is counted from this power-on
        self.board.power_on(attach)

    @property
    def console(self) -> Console:
        if self._console is None:
            raise HarnessError("the board has not been powered on")
        return self._console

    @property
    def repl(self) -> Repl:
        if self._repl is None:
            raise HarnessError("the board has not been powered on")
        return self._repl

    @property
    def flash(self) -> Path:
        """The live flash file: read it to see what the guest has written."""
        return self.board.flash

    @property
    def data(self) -> socket.socket:
        """UART1: a byte pipe for payloads."""
        return self.board.data

    def wait_prompt(self, timeout: float = 30.0) -> None:
        """Wait for `>>> ` after power-on or reset (fails fast on crash or boot loop; a
        guest stuck meanwhile is GuestStalled, as in every console wait)."""
        self.repl.wait_prompt(timeout)

    def running_partition(self, timeout: float = 30.0) -> str:
        """The partition MicroPython runs from, as the device itself says."""
        return self.repl.exec(f"import esp32; print({RUNNING}.info()[4])", timeout).strip()

    def next_update_partition(self, timeout: float = 30.0) -> str:
        """The slot esp_ota_get_next_update_partition() names."""
        code = f"import esp32; print({RUNNING}.get_next_update().info()[4])"
        return self.repl.exec(code, timeout).strip()

    def connect_wifi(self, timeout: float = 30.0) -> tuple[str, ...]:
        """Join the access point the chip's Wi-Fi QEMU emulates and wait for an address
        (a board without the network fails here with MicroPython's own error); its
        ifconfig(): address, netmask, gateway, DNS."""
        wifi = self.chip.wifi
        if wifi is None:
            raise HarnessError(f"no QEMU emulates the Wi-Fi of {self.chip.name}")
        code = WIFI_CONNECT % (wifi.ssid, int(timeout * 1000), wifi.ssid, timeout)
        out = self.repl.exec(code, timeout + 15).strip()
        return tuple(re.findall(r"'([^']*)'", out))

    def flash_state(self) -> formats.FlashState:
        """otadata and the bootloader's choice, read from the live flash file."""
        return formats.FlashState.of(self.flash.read_bytes())

    def start_reset(self, kind: ResetKind, timeout: float = 30.0) -> None:
        """Reset without waiting: `soft` is machine.reset() as an app calls it, `hard` is
        QMP system_reset, like the EN pin; the ROM banner and the bootloader run again."""
        self.console.log.resets_since_up.clear()
        if kind == "hard":
            self.board.hard_reset()
        else:
            self.repl.exec_start("import machine\nmachine.reset()", timeout)

    def reset(self, kind: ResetKind, *, until: str = "prompt", timeout: float = 60.0) -> Boot:
        """Reset, wait for the ROM banner and (until='prompt') the REPL; say what booted."""
        mark = self.console.mark()
        self.start_reset(kind, timeout)
        return self.await_boot(mark, until=until, timeout=timeout)

    def await_boot(self, mark: int, *, until: str = "prompt", timeout: float = 60.0) -> Boot:
        """After a reset that was asked for: banner, prompt, the running partition.

        A watchdog reset among the resets is not the one asked for, whatever the step
        expected: it raises WatchdogReset (the retry policy's), never passes as the reboot.
        """
        banner = self.console.expect(RESET_BANNER, timeout, during="reset", fail_fast=False)
        self.check_requested_reset(banner.group(2).decode(), "the reboot")
        if until != "prompt":
            return Boot(None, log_lines(self.console.lines_since(mark)))
        self.wait_prompt(timeout)
        for reason in reset_reasons(self.console.lines_since(mark)):
            self.check_requested_reset(reason, "the boot after the reboot")
        return Boot(self.running_partition(), log_lines(self.console.lines_since(mark)))

    def check_requested_reset(self, reason: str, during: str) -> None:
        """A reset the step asked for is a software or power-on reset; a watchdog's is not."""
        if self.chip.is_watchdog(reason):
            load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
            raise UnexpectedReset.of(
                f"a watchdog reset the device ({reason}) during {during}, not the reset the "
                f"step asked for (under emulation the host may have starved QEMU; host load "
                f"average {load} on {os.cpu_count()} cores); serial log {self.console.log.path}",
                reason, self.chip,
            )  # fmt: skip


def reset_reasons(lines: list[str]) -> list[str]:
    """The ROM's reset reasons (SW_CPU_RESET, TG1WDT_SYS_RESET, ...) among serial lines."""
    found = (RESET_BANNER.search(line.encode()) for line in lines)
    return [m.group(2).decode() for m in found if m]


def run_copy(image: Path, run_dir: Path, writes: tuple[tuple[int, bytes], ...] = ()) -> Path:
    """The per-run flash file QEMU writes into; the cached image stays pristine.

    `writes` (offset, bytes) go into the copy before QEMU starts: the only time a host
    write reaches the guest (see harness.emulator.ota, staged writes).
    """
    dst = run_dir / "flash.bin"
    shutil.copyfile(image, dst)
    os.chmod(dst, 0o644)
    if writes:
        size = dst.stat().st_size
        with dst.open("r+b") as f:
            for offset, data in writes:
                if offset + len(data) > size:
                    raise ImageError(
                        f"a staged write at {offset:#x} runs past the end of the flash"
                    )
                f.seek(offset)
                f.write(data)
    return dst


def _run_dir(options: BootOptions) -> tuple[Path, bool]:
    """The run folder, and whether it is kept afterwards."""
    if options.run_dir is not None:
        options.run_dir.mkdir(parents=True, exist_ok=True)
        return options.run_dir, True
    if options.artifacts is not None:
        options.artifacts.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="run-", dir=options.artifacts)), True
    return janitor.mkdtemp(prefix="esp32-ota-harness-"), False


@contextlib.contextmanager
def boot(image: Path, options: BootOptions) -> Iterator[Device]:
    """Boot `image` (a flash image of an exact size) as `options` say; yield the Device."""
    chip = options.policy.chip
    network = options.policy.network  # Espressif's release, or the chip's Wi-Fi build
    binary = find_wifi_qemu(options.qemu, chip) if network else find_qemu(options.qemu, chip)
    setup = MachineSetup(binary, options.policy.psram, options.policy.watchdogs,
                         trace_flash=options.record_flash, chip=chip, network=network)  # fmt: skip
    run_dir, keep = _run_dir(options)
    board: Board | None = None
    try:
        flash = run_copy(image, run_dir, options.stage)
        with hostlock.emulation_slot(options.policy.alone):
            if options.serve:
                board = ServedBoard(setup, flash, run_dir, download=options.download)
            else:
                board = QemuBoard(setup, flash, run_dir)
            device = Device(board, run_dir, chip)
            device.power_on()
            yield device
    finally:
        if board is not None:
            board.close()
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
