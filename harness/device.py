"""One run of one flash image: machine + console + REPL, and the device operations on them.

    with boot(image) as dev:          # QEMU started paused, serial attached, resumed
        dev.wait_prompt()
        print(dev.running_partition())
        booted = dev.reset("soft")    # machine.reset(), ROM banner, >>> again
    # here QEMU is dead and reaped, whatever happened inside

`Device` is the one API the rest of the harness uses to reset, wait for the prompt and
ask which partition runs; what it reads from the serial port it reads through the
console. The run folder holds the per-run copy of the flash (`flash.bin`, which QEMU
writes into), `serial.log`, `qemu-cmdline.txt` and `qemu-stderr.log`. It is removed at
the end unless the caller gave one (`artifacts`), where it stays as evidence.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import formats, hostlock, images, janitor
from .board import Board
from .console import RESET_BANNER, Console, log_lines
from .errors import DeviceTimeout, GuestStalled, HarnessError, UnexpectedReset
from .firmware import PSRAM_MARKER, app_idf_version, stalls_under_load
from .qemu import WATCHDOGS, CpuState, Machine, find_qemu
from .repl import Repl

ResetKind = Literal["soft", "hard"]
RUNNING = "esp32.Partition(esp32.Partition.RUNNING)"
STALL_AFTER = 10.0  # a start-up takes about 2 s: this long silent after `entry` is a stall


@dataclass(frozen=True)
class Boot:
    """What one reset came to: the partition that runs, and what the bootloader said."""

    booted: str | None  # None: not asked (the reset did not wait for the prompt)
    log_lines: list[str]  # ESP-IDF E/W lines printed during the reset


@dataclass
class Device:
    host: Machine | Board  # a Board when the UART is served to the user's own tools
    console: Console
    repl: Repl
    run_dir: Path

    @property
    def machine(self) -> Machine:
        """The QEMU running now (a served board gets a new one at each power cycle)."""
        if isinstance(self.host, Machine):
            return self.host
        if self.host.machine is None:
            raise HarnessError("the board has no QEMU running")
        return self.host.machine

    @property
    def board(self) -> Board | None:
        return self.host if isinstance(self.host, Board) else None

    @property
    def flash(self) -> Path:
        """The live flash file: read it to see what the guest has written."""
        return self.machine.flash

    @property
    def data(self) -> socket.socket:
        """UART1, wired when booted with `data_channel=True`: a byte pipe for payloads."""
        if self.machine.data is None:
            raise HarnessError(
                "this device was booted without the data channel (data_channel=True)"
            )
        return self.machine.data

    def wait_prompt(self, timeout: float = 30.0) -> None:
        """Wait for `>>> ` after power-on or reset (fails fast on crash or boot loop).

        A wait that ends with the bootloader's `entry 0x...` as the last line is a
        stalled start-up, and says so.
        """
        try:
            self.repl.wait_prompt(timeout)
        except DeviceTimeout as exc:
            said = [line for line in self.console.log.lines[-8:] if line.strip()]
            if timeout >= STALL_AFTER and said and said[-1].startswith("entry 0x"):
                load = os.getloadavg()
                cores = os.cpu_count() or 1
                cause = "the host" if load[0] >= cores else "the emulator"
                raise GuestStalled(
                    f"MicroPython never started: the emulated CPUs stalled after the "
                    f"bootloader's `{said[-1]}` for {timeout:g}s ({self.where_stuck()}; host "
                    f"load average {', '.join(f'{x:.2f}' for x in load)} on {cores} cores: "
                    f"likely {cause}, not the firmware); serial log {self.console.log.path}"
                ) from exc
            raise

    def stuck_cpus(self, gap: float = 0.3) -> list[CpuState]:
        """The CPUs at the same PC and interrupt level in two looks `gap` apart: spinning
        in place or halted, not running. What a guest that stopped answering is doing."""
        try:
            first = self.machine.cpu_states()
            time.sleep(gap)
            again = self.machine.cpu_states()
        except HarnessError:  # a served board between two QEMUs
            return []
        return [a for a, b in zip(first, again, strict=False) if a == b]

    def where_stuck(self) -> str:
        """A guest that stopped answering, as QEMU sees its CPUs: one spinning at interrupt
        level 4-5 (a high-level handler) while the other waits is a cross-CPU deadlock."""
        stuck = self.stuck_cpus()
        if not stuck:
            return "where its CPUs are is not known"
        where = f"the emulated CPUs are stuck: {'; '.join(map(str, stuck))}"
        spinning = [c for c in stuck if c.intlevel >= 4]
        if spinning:
            where += (f"; CPU{spinning[0].cpu} spins in a high-level interrupt handler, "
                      "a cross-CPU deadlock")  # fmt: skip
        return where

    def running_partition(self) -> str:
        """The partition MicroPython runs from, as the device itself says."""
        return self.repl.exec(f"import esp32; print({RUNNING}.info()[4])").strip()

    def next_update_partition(self) -> str:
        """The slot esp_ota_get_next_update_partition() names."""
        return self.repl.exec(f"import esp32; print({RUNNING}.get_next_update().info()[4])").strip()

    def flash_state(self) -> formats.FlashState:
        """otadata and the bootloader's choice, read from the live flash file."""
        return formats.FlashState.of(self.flash.read_bytes())

    def start_reset(self, kind: ResetKind) -> None:
        """Reset without waiting: `soft` is machine.reset() as an app calls it, `hard` is
        QMP system_reset, like the EN pin; the ROM banner and the bootloader run again."""
        self.console.log.resets_since_up.clear()
        if kind == "hard":
            self.machine.reset()
        else:
            self.repl.exec_start("import machine\nmachine.reset()")

    def reset(self, kind: ResetKind, *, until: str = "prompt", timeout: float = 60.0) -> Boot:
        """Reset, wait for the ROM banner and (until='prompt') the REPL; say what booted."""
        mark = self.console.mark()
        self.start_reset(kind)
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
        if "WDT" in reason:
            load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
            raise UnexpectedReset.of(
                f"a watchdog reset the device ({reason}) during {during}, not the reset the "
                f"step asked for (under emulation the host may have starved QEMU; host load "
                f"average {load} on {os.cpu_count()} cores); serial log {self.console.log.path}",
                reason,
            )


def reset_reasons(lines: list[str]) -> list[str]:
    """The ROM's reset reasons (SW_CPU_RESET, TG1WDT_SYS_RESET, ...) among serial lines."""
    found = (RESET_BANNER.search(line.encode()) for line in lines)
    return [m.group(2).decode() for m in found if m]


@contextlib.contextmanager
def boot(
    image: Path,
    *,
    qemu: str | Path | None = None,
    psram: bool | None = None,
    artifacts: Path | None = None,
    run_dir: Path | None = None,
    data_channel: bool = False,
    watchdogs: bool = WATCHDOGS,
    stage: Sequence[tuple[int, bytes]] = (),
    alone: bool | None = None,
    serve: bool = False,
    download: bool = False,
) -> Iterator[Device]:
    """Boot `image` (a flash image of an exact size) and yield the Device.

    `psram=None` gives the machine PSRAM exactly when the firmware is a SPIRAM build.
    `data_channel` wires the guest's UART1 to `Device.data`, a socket for payloads.
    `watchdogs=False` disables the emulated timer-group watchdogs (harness.qemu).
    `stage` (offset, bytes) is written into the run's flash copy before QEMU starts.
    `alone`: have the host to itself (harness.hostlock); None: when the firmware is one
    measured to stall on a shared host. `serve` puts the UART on a pty and an RFC2217
    port for the user's own tools (harness.board), `download` starts in download mode.
    `artifacts` keeps a fresh run folder inside it; `run_dir` is that folder, exactly.
    """
    qemu_path = find_qemu(qemu)
    keep = artifacts is not None or run_dir is not None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    elif artifacts is not None:
        artifacts.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=artifacts))
    else:
        run_dir = janitor.mkdtemp(prefix="esp32-ota-harness-")
    console: Console | None = None
    try:
        flash = images.run_copy(image, run_dir, stage)
        if psram is None or alone is None:  # the runner knows both; other callers may not
            data = image.read_bytes()
            if psram is None:
                psram = PSRAM_MARKER in data
            if alone is None:
                alone = stalls_under_load(app_idf_version(data, formats.parse_table(data)))
        with hostlock.emulation_slot(alone):
            if serve:
                board = Board(qemu_path, flash, run_dir, psram=psram, watchdogs=watchdogs,
                              download=download)  # fmt: skip
                try:
                    board.start()
                    console = Console(board.console_socket, board.log, board.check_alive)
                    yield Device(board, console, Repl(console), run_dir)
                finally:
                    board.close()
                return
            machine = Machine(
                qemu_path, flash, run_dir, psram=psram, watchdogs=watchdogs,
                data_channel=data_channel, download=download,
            )  # fmt: skip
            with machine:

                def attach(serial: socket.socket) -> None:
                    nonlocal console
                    console = Console(serial, run_dir / "serial.log", machine.check_alive)

                machine.start(attach)
                assert console is not None
                yield Device(machine, console, Repl(console), run_dir)
    finally:
        if console is not None:
            console.close()
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
