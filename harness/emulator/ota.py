"""OTA steps: write a payload into the next slot, select it, reboot, say what booted.

Two ways to write, both real:

- `update()`, the harness's own routine: a short program pasted into MicroPython reads
  the payload from UART1 (a second serial socket, at 5 Mbaud; the ESP-IDF UART driver
  stops reading when its buffer is full, so no byte is lost) and writes it with
  `esp32.Partition.writeblocks` in 32 KiB chunks, which costs fewer emulated flash
  operations than 4 KiB blocks. The harness then checks the slot byte for byte in the
  run's flash file (what the bootloader will read), selects the slot and reboots.
- `run_library()`, a user's device library: the library and the payload are baked into
  the filesystem at image build time, and the user's REPL command runs as it would on
  a board, reboot included.

- `staged()`, no emulated flash operation at all: the payload is written into the slot
  of the run's flash file on the host *before QEMU starts*, as `esptool write_flash`
  would, and the device then only selects the slot and reboots. Before the start is the
  only correct time: Espressif's QEMU reads the whole flash file into memory when the
  machine is created (hw/block/m25p80.c, m25p80_realize) and serves SPI reads from that
  copy, while memory-mapped reads through the cache refill from the file
  (hw/misc/esp32_dport.c); a host write while QEMU runs, even stopped, would leave the
  guest with two different views of its flash. The step then checks that the slot it
  was staged into is the one the device would update, and that the slot holds the
  payload byte for byte.

`METHODS` holds one strategy per method, by the name a scenario's `method:` gives, each
a function of the device and a `Request`. Either way the result is an `OtaReport`: the
slot written, set_boot()'s verdict, the bootloader's E/W lines during the reboot, the
partition that booted (asked of the REPL: MicroPython's bootloader logs nothing on
success or rollback), and otadata before and after, read from the flash file. A step's
`timeout` bounds the whole of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DeviceError, DeviceTimeout, HarnessError
from ..flash import formats
from ..flash.formats import Select
from ..flash.inputs import read_input
from .console import Console, log_lines
from .device import Device, reset_reasons

CHUNK = 32 * 1024
VFS_READSIZE = 1024
REMOUNT = """import os, esp32
bdev = esp32.Partition.find(esp32.Partition.TYPE_DATA, label='vfs')[0]
os.umount('/')
os.mount(os.VfsLfs2(bdev, readsize=%d), '/')
os.chdir('/')
"""
FIND_APP = "esp32.Partition.find(esp32.Partition.TYPE_APP, label={!r})[0]"

# UART1 on GPIO26/27: QEMU carries UART1 whatever the pins, and MicroPython refuses 16/17
# (UART1's usual pins) on SPIRAM builds, where PSRAM owns them ("ValueError: invalid pin")
WRITER = """
import esp32, hashlib, machine, binascii, gc
def _harness_write(label, size, chunk):
    p = esp32.Partition.find(esp32.Partition.TYPE_APP, label=label)[0]
    u = machine.UART(1, baudrate=5000000, tx=26, rx=27, rxbuf=min(chunk, 32768), timeout=5000)
    gc.collect()
    buf = bytearray(chunk)
    mv = memoryview(buf)
    h = hashlib.sha256()
    print('ready')
    for off in range(0, size, chunk):
        n = min(chunk, size - off)
        got = 0
        while got < n:
            r = u.readinto(mv[got:n])
            if not r:
                raise OSError('data channel stalled at byte %d of %d' % (off + got, size))
            got += r
        h.update(mv[:n])
        m = (n + 4095) // 4096 * 4096
        for i in range(n, m):
            buf[i] = 0xFF
        p.writeblocks(off // 4096, mv[:m])
    u.deinit()
    print(binascii.hexlify(h.digest()).decode())
"""
TRAILER = b"\xff" * 512  # pushes the payload's last bytes out of the UART's RX FIFO


@dataclass
class OtaTimings:
    write_s: float | None = None  # delivered, written and checked (harness method)
    library_s: float | None = None  # the user's command, up to its reboot (library method)
    reboot_s: float | None = None
    total_s: float | None = None


@dataclass
class OtaReport:
    payload: str
    payload_kind: formats.FileKind  # what the payload file is (an app, a full firmware, ...)
    method: str
    target: str | None = None
    bytes_written: int = 0
    truncated_to_slot: bool = False
    delivered_sha_ok: bool | None = None
    slot_matches_payload: bool | None = None
    set_boot_error: str | None = None
    rebooted: bool = False
    bootloader_lines: list[str] = field(default_factory=list)
    booted: str | None = None
    confirmed: bool = False
    before: formats.FlashState | None = None
    after: formats.FlashState | None = None
    output: str = ""
    timings: OtaTimings = field(default_factory=OtaTimings)


class Deadline:
    """One timeout for a whole step: each wait gets what is left of it."""

    def __init__(self, seconds: float, console: Console):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.start = time.monotonic()
        self.console = console  # names a stuck guest, as every console wait does

    def left(self, during: str) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            ran_out = f"the step's timeout of {self.seconds:g}s ran out before {during}"
            raise self.console.timed_out(DeviceTimeout(ran_out))
        return remaining

    def elapsed(self) -> float:
        return round(time.monotonic() - self.start, 3)


@dataclass(frozen=True)
class After:
    """What follows the write. `select`: "set_boot" calls MicroPython's
    Partition.set_boot() (ESP-IDF validates the app there first); "otadata" writes the
    otadata record directly, so the bootloader alone judges the slot; "none" leaves
    otadata as it is. Then a reboot (`machine.reset()`), and, when the new app runs,
    `mark_app_valid_cancel_rollback()` if `confirm`."""

    select: Select = "set_boot"
    reboot: bool = True
    confirm: bool = False


@dataclass
class _Write:
    report: OtaReport
    slot: formats.Partition
    data: bytes  # what goes into the slot: the payload, cut to the slot's size


def update(
    dev: Device,
    payload: Path,
    target: str | None = None,
    after: After = After(),
    timeout: float = 300.0,
) -> OtaReport:
    """The harness's own OTA: deliver over UART1, write, verify, then `after`."""
    sock = dev.data
    deadline = Deadline(timeout, dev.console)
    write = _begin(dev, payload, "harness", target, deadline)
    report, data = write.report, write.data
    call = f"_harness_write({report.target!r}, {len(data)}, {CHUNK})\n"
    dev.repl.exec_start(WRITER + call, deadline.left("starting the on-device writer"))
    dev.console.expect(
        b"ready\r\n", min(30, deadline.left("the writer's ready")),
        during="starting the on-device OTA writer", resets=False,
    )  # fmt: skip
    sender = threading.Thread(target=_send, args=(sock, data), daemon=True)
    sender.start()
    out, err = dev.repl.exec_finish(deadline.left("the payload's delivery"))
    sender.join(5)
    if err:
        raise DeviceError(err, out)
    report.delivered_sha_ok = out.strip() == hashlib.sha256(data).hexdigest()
    return _finish(dev, write, after, deadline)


def staged(
    dev: Device, payload: Path, target: str, after: After = After(), timeout: float = 300.0
) -> OtaReport:
    """`after` on a slot whose payload was staged before the boot."""
    deadline = Deadline(timeout, dev.console)
    return _finish(dev, _begin(dev, payload, "staged", target, deadline), after, deadline)


def _begin(
    dev: Device, payload: Path, method: str, target: str | None, deadline: Deadline
) -> _Write:
    """The report, the target slot and the bytes that go into it (cut to the slot)."""
    data = read_input(payload)
    report = OtaReport(str(payload), formats.classify(data), method)
    report.before = dev.flash_state()
    report.target = target or dev.next_update_partition(deadline.left("asking for the OTA slot"))
    slot = _slot(dev, report.target)
    if len(data) > slot.size:
        data, report.truncated_to_slot = data[: slot.size], True
    report.bytes_written = len(data)
    return _Write(report, slot, data)


def _finish(dev: Device, write: _Write, after: After, deadline: Deadline) -> OtaReport:
    """The slot checked byte for byte in the flash file, then selected and rebooted into."""
    report, slot, data = write.report, write.slot, write.data
    written = dev.flash.read_bytes()[slot.offset : slot.offset + len(data)]
    report.slot_matches_payload = written == data
    report.timings.write_s = deadline.elapsed()
    _select_and_reboot(dev, report, after, deadline)
    report.timings.total_s = deadline.elapsed()
    return report


def staged_bytes(payload: Path, slot: formats.Partition) -> bytes:
    """What a staged write puts at the slot's offset: the payload, cut to the slot."""
    return read_input(payload)[: slot.size]


@dataclass(frozen=True)
class Library:
    """A user's OTA library at work: the REPL `command` that runs it (it writes the slot,
    selects it and reboots), whether to confirm the new app, and the littlefs read size
    to remount the filesystem with first. MicroPython mounts with readsize=32 (a 128-byte
    cache), so reading a 1.5 MB file costs some 13,000 emulated flash operations; with
    1024 (a 4 KiB cache) whole-block reads go straight to flash. The library's code and
    the file's bytes stay exactly the same. None keeps MicroPython's own mount."""

    command: str
    confirm: bool = False
    vfs_readsize: int | None = VFS_READSIZE


def run_library(dev: Device, payload: Path, library: Library, timeout: float = 900.0,
                method: str = "library") -> OtaReport:  # fmt: skip
    """Run a user's OTA library (payload already in the filesystem, or on the host's
    server for a download), follow the reboot."""
    command, confirm = library.command, library.confirm
    deadline = Deadline(timeout, dev.console)
    report = OtaReport(str(payload), formats.classify(read_input(payload)), method)
    report.before = dev.flash_state()
    report.target = dev.next_update_partition()
    remount(dev, library.vfs_readsize)
    mark = dev.console.mark()
    dev.repl.exec_start(command, deadline.left(f"running {command!r}"))
    end = dev.repl.exec_finish_or_reset(deadline.left(f"running {command!r}"),
                                        during=f"running {command!r}")  # fmt: skip
    if end.reset is not None:
        dev.check_requested_reset(end.reset, f"running {command!r}")
        report.rebooted = True
        dev.wait_prompt(min(60, deadline.left("the reboot")))
        for reason in reset_reasons(dev.console.lines_since(mark))[1:]:
            dev.check_requested_reset(reason, "the boot after the library's reboot")
        report.output = _printable("\n".join(dev.console.lines_since(mark)))
    else:  # the command returned instead of rebooting
        report.output = end.out
        if end.err:
            raise DeviceError(end.err, report.output)
    report.timings.library_s = deadline.elapsed()
    _after_boot(dev, report, mark, confirm, deadline)
    report.timings.total_s = deadline.elapsed()
    return report


def remount(dev: Device, readsize: int | None) -> None:
    """The filesystem remounted with littlefs `readsize` (None: as MicroPython mounts it)."""
    if readsize:
        dev.repl.exec(REMOUNT % readsize)


def _select_and_reboot(dev: Device, report: OtaReport, after: After, deadline: Deadline) -> None:
    assert report.target is not None
    select = after.select
    if select == "set_boot":
        try:
            dev.repl.exec(
                f"import esp32\n{FIND_APP.format(report.target)}.set_boot()",
                deadline.left("set_boot()"),
            )
        except DeviceError as exc:
            report.set_boot_error = exc.traceback.splitlines()[-1]
    elif select == "otadata":
        write_otadata(dev, select=report.target)
    elif select != "none":
        raise HarnessError(f"unknown select {select!r}: use set_boot, otadata or none")
    if report.set_boot_error or not after.reboot:
        report.booted = dev.running_partition(deadline.left("asking what runs"))
        report.after = dev.flash_state()
        return
    mark = dev.console.mark()
    start = time.monotonic()
    dev.start_reset("soft", deadline.left("the reboot"))
    dev.await_boot(mark, until="banner", timeout=min(30, deadline.left("the reboot")))
    dev.wait_prompt(min(60, deadline.left("the prompt after the reboot")))
    report.rebooted = True
    report.timings.reboot_s = round(time.monotonic() - start, 3)
    _after_boot(dev, report, mark, after.confirm, deadline)


def _after_boot(
    dev: Device, report: OtaReport, mark: int, confirm: bool, deadline: Deadline
) -> None:
    report.bootloader_lines = log_lines(dev.console.lines_since(mark))
    report.booted = dev.running_partition(deadline.left("asking what booted"))
    if confirm and report.booted == report.target:
        dev.repl.exec("import esp32; esp32.Partition.mark_app_valid_cancel_rollback()",
                      deadline.left("confirming the app"))  # fmt: skip
        report.confirmed = True
    report.after = dev.flash_state()


def write_otadata(
    dev: Device,
    *,
    select: str | None = None,
    state: str = "UNDEFINED",
    corrupt: bool = False,
    erase: bool = False,
) -> None:
    """Write otadata from the device, as ESP-IDF lays it out, without validating the app.

    `select` makes the named OTA slot the bootloader's choice (what
    esp_ota_set_boot_partition() writes after its checks); `corrupt` overwrites both
    records with garbage (bad CRCs, as after a torn write); `erase` leaves both blank.
    """
    flash = dev.flash.read_bytes()
    table = formats.parse_table(flash)
    records = formats.read_otadata(flash, table)
    if records is None:
        raise HarnessError("this image has no otadata partition (an OTA layout is needed)")
    if erase:
        sectors = formats.otadata_blank()
    elif corrupt:
        sectors = formats.otadata_corrupt()
    elif select is not None:
        sectors = formats.otadata_selecting(table, records, select, state)
    else:
        raise HarnessError("write_otadata takes one of: select, corrupt, erase")
    code = ["import esp32, binascii", "p = esp32.Partition.find(esp32.Partition.TYPE_DATA, 0)[0]"]
    for sector, data in sectors.items():  # writeblocks(n, buf) erases the sector first
        code.append(f"p.writeblocks({sector}, binascii.unhexlify({data.hex()!r}))")
    dev.repl.exec("\n".join(code))


# -- the methods: one strategy each, by the name a scenario's `method:` gives ----------


@dataclass(frozen=True)
class Request:
    """One update, whatever the method: the payload, the slot (None: the next; a staged
    write names the slot it was staged into), what follows the write, the bound on the
    whole step, and the user's REPL `command` (a library's method)."""

    payload: Path
    target: str | None = None
    after: After = After()
    timeout: float = 300.0
    command: str | None = None


Method = Callable[[Device, Request], OtaReport]
# The strategies by name; what each means for a plan (stages, cost, a device write) is
# harness.scenario.stepformats.OTA_METHODS, under the same names (tests/test_scenarios.py).
METHODS: dict[str, Method] = {}


def method(name: str) -> Callable[[Method], Method]:
    """Register an OTA method's strategy under its name."""

    def register(strategy: Method) -> Method:
        METHODS[name] = strategy
        return strategy

    return register


@method("harness")
def _by_harness(dev: Device, req: Request) -> OtaReport:
    return update(dev, req.payload, req.target, req.after, req.timeout)


@method("staged")
def _staged(dev: Device, req: Request) -> OtaReport:
    if req.target is None:
        raise HarnessError("a staged write needs the slot it was staged into")
    return staged(dev, req.payload, req.target, req.after, req.timeout)


@method("library")
def _by_library(dev: Device, req: Request) -> OtaReport:
    if not req.command:
        raise HarnessError("a library's update needs its REPL `command`")
    return run_library(dev, req.payload, Library(req.command, req.after.confirm), req.timeout)


@method("download")
def _by_download(dev: Device, req: Request) -> OtaReport:
    """The library downloads the payload from the host's server (the step offered it
    there, harness.scenario.serving); the filesystem is not read, so not remounted."""
    if not req.command:
        raise HarnessError("a download's update needs the library's REPL `command`")
    library = Library(req.command, req.after.confirm, vfs_readsize=None)
    return run_library(dev, req.payload, library, req.timeout, "download")


def _printable(text: str) -> str:
    """Drop raw-paste flow-control bytes from captured output."""
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]|\ufffd", "", text)


def _slot(dev: Device, name: str) -> formats.Partition:
    with dev.flash.open("rb") as f:
        table = formats.parse_table(f.read(formats.TABLE_OFFSET + 0x1000))
    part = table.get(name)
    if part is None or not part.is_app:
        raise HarnessError(f"no app partition named {name!r} in this image")
    return part


def _send(sock: socket.socket, data: bytes) -> None:
    """Payload, then filler the writer never reads.

    ESP-IDF's UART driver moves bytes from the hardware FIFO to its buffer when the FIFO
    passes a threshold or on the RX-timeout interrupt; under QEMU, ESP-IDF 5.0 builds
    (v1.22.0) never got that timeout, and the last few dozen bytes of a payload stayed
    in the FIFO ("data channel stalled at byte 1545073 of 1545088"). The filler pushes
    them through; the writer reads exactly the payload's length, and deinit() drops the
    rest.
    """
    with contextlib.suppress(OSError):  # QEMU went away; the REPL side reports why
        sock.sendall(data + TRAILER)
