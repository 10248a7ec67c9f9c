"""One run of one flash image: machine + console + REPL, and the run's own folder.

    with boot(image) as dev:          # QEMU started paused, serial attached, resumed
        dev.repl.wait_prompt()
        print(dev.repl.exec("import esp32; print(esp32.Partition(...).info())"))
    # here QEMU is dead and reaped, whatever happened inside

The run folder holds the per-run copy of the flash (`flash.bin`, which QEMU writes
into), `serial.log`, `qemu-cmdline.txt` and `qemu-stderr.log`. It is removed at the
end unless the caller gave one (`artifacts`), where it stays as evidence.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import images, janitor
from .console import Console
from .qemu import Machine, find_qemu
from .repl import Repl


@dataclass
class Device:
    machine: Machine
    console: Console
    repl: Repl
    run_dir: Path

    @property
    def flash(self) -> Path:
        """The live flash file: read it to see what the guest has written."""
        return self.machine.flash

    def soft_reset(self) -> None:
        """`machine.reset()`, as an app calls it; the prompt never comes back from it."""
        self.console.log.resets_since_up.clear()
        self.repl.exec_start("import machine\nmachine.reset()")

    def hard_reset(self) -> None:
        """Reset through QMP, like the EN pin; the ROM banner and bootloader run again."""
        self.console.log.resets_since_up.clear()
        self.machine.reset()


@contextlib.contextmanager
def boot(
    image: Path,
    *,
    qemu: str | Path | None = None,
    psram: bool | None = None,
    artifacts: Path | None = None,
    run_dir: Path | None = None,
    data_channel: bool = False,
) -> Iterator[Device]:
    """Boot `image` (a flash image of an exact size) and yield the Device.

    `psram=None` gives the machine PSRAM exactly when the firmware is a SPIRAM build.
    `data_channel` wires the guest's UART1 to `machine.data`, a socket for payloads.
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
        flash = images.run_copy(image, run_dir)
        if psram is None:
            psram = images.needs_psram(image.read_bytes())
        with Machine(qemu_path, flash, run_dir, psram=psram, data_channel=data_channel) as machine:

            def attach(sock: object) -> None:
                nonlocal console
                console = Console(machine.serial, run_dir / "serial.log", machine.check_alive)

            machine.start(attach)
            assert console is not None
            yield Device(machine, console, Repl(console), run_dir)
    finally:
        if console is not None:
            console.close()
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
