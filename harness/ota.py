"""OTA steps: write a payload into the next slot, set_boot(), reboot, say what booted.

Two ways to write, both real:

- `update()`, the harness's own routine: a short program pasted into MicroPython reads
  the payload from UART1 (a second serial socket, at 5 Mbaud; the ESP-IDF UART driver
  stops reading when its buffer is full, so no byte is lost) and writes it with
  `esp32.Partition.writeblocks` in 32 KiB chunks, which costs fewer emulated flash
  operations than 4 KiB blocks. The harness then checks the slot byte for byte in the
  run's flash file (what the bootloader will read), calls `set_boot()` and reboots.
- `run_library()`, a user's device library: the library and the payload are baked into
  the littlefs vfs at image build time, and the user's REPL command runs as it would on
  a board, reboot included.

Either way the result is an `OtaReport`: the slot written, set_boot()'s verdict, the
bootloader's E/W lines during the reboot, the partition that booted (asked of the REPL:
MicroPython's bootloader logs nothing on success or rollback), and otadata before and
after, read from the flash file.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import inspect
from .console import RESET_BANNER
from .device import Device
from .errors import DeviceError, HarnessError

CHUNK = 32 * 1024
VFS_READSIZE = 1024
REMOUNT = """import os, esp32
bdev = esp32.Partition.find(esp32.Partition.TYPE_DATA, label='vfs')[0]
os.umount('/')
os.mount(os.VfsLfs2(bdev, readsize=%d), '/')
os.chdir('/')
"""
RUNNING = "esp32.Partition(esp32.Partition.RUNNING)"
BOOT_LINE = re.compile(r"^(?:\x1b\[[0-9;]*m)?([EW]) \((\d+)\) ([\w.]+): (.*?)(?:\x1b\[0m)?$")

WRITER = """
import esp32, hashlib, machine, binascii, gc
def _harness_write(label, size, chunk):
    p = esp32.Partition.find(esp32.Partition.TYPE_APP, label=label)[0]
    u = machine.UART(1, baudrate=5000000, tx=17, rx=16, rxbuf=chunk, timeout=5000)
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


@dataclass
class FlashState:
    """otadata and the bootloader's choice, read from the live flash file."""

    otadata: list[dict[str, object]] | None
    boot: dict[str, object]

    @classmethod
    def read(cls, flash: Path) -> FlashState:
        return cls.of(flash.read_bytes())

    @classmethod
    def of(cls, data: bytes) -> FlashState:
        table = inspect.parse_table(data)
        records = inspect.read_otadata(data, table)
        return cls(
            [asdict(r) for r in records] if records is not None else None,
            inspect.boot_choice(table, records),
        )

    def states(self) -> list[str]:
        return [str(r["state"]) for r in self.otadata or []]


@dataclass
class OtaReport:
    payload: str
    payload_kind: str
    payload_verdict: str
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
    before: FlashState | None = None
    after: FlashState | None = None
    output: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def running(dev: Device) -> str:
    """The partition MicroPython runs from, as the device itself says."""
    return dev.repl.exec(f"import esp32; print({RUNNING}.info()[4])").strip()


def next_slot(dev: Device) -> str:
    return dev.repl.exec(f"import esp32; print({RUNNING}.get_next_update().info()[4])").strip()


def update(
    dev: Device,
    payload: Path,
    *,
    target: str | None = None,
    select: str = "set_boot",
    confirm: bool = False,
    reboot: bool = True,
    timeout: float = 300.0,
) -> OtaReport:
    """The harness's own OTA: deliver over UART1, write, verify, select the slot, reboot.

    `select`: "set_boot" calls MicroPython's Partition.set_boot() (ESP-IDF validates
    the app there first); "otadata" writes the otadata record directly, so the
    bootloader alone judges the slot; "none" leaves otadata as it is.
    """
    if dev.machine.data is None:
        raise HarnessError("this device was booted without the data channel (data_channel=True)")
    data = inspect.read_input(payload)
    report = _new_report(payload, data, "harness")
    clock = time.monotonic()
    report.before = FlashState.read(dev.flash)
    report.target = target or next_slot(dev)
    slot = _slot(dev.flash, report.target)
    if len(data) > slot.size:
        data, report.truncated_to_slot = data[: slot.size], True
    report.bytes_written = len(data)
    call = f"_harness_write({report.target!r}, {len(data)}, {CHUNK})\n"
    dev.repl.exec_start(WRITER + call, timeout)
    dev.console.expect(b"ready\r\n", 30, during="starting the on-device OTA writer", resets=False)
    sender = threading.Thread(target=_send, args=(dev, data), daemon=True)
    sender.start()
    out, err = dev.repl.exec_finish(timeout)
    sender.join(5)
    if err:
        raise DeviceError(err, out)
    report.delivered_sha_ok = out.strip() == hashlib.sha256(data).hexdigest()
    written = dev.flash.read_bytes()[slot.offset : slot.offset + len(data)]
    report.slot_matches_payload = written == data
    report.timings["write_s"] = round(time.monotonic() - clock, 3)
    _select_and_reboot(dev, report, select, confirm, reboot, timeout)
    report.timings["total_s"] = round(time.monotonic() - clock, 3)
    return report


def run_library(
    dev: Device,
    payload: Path,
    command: str,
    *,
    confirm: bool = False,
    vfs_readsize: int | None = VFS_READSIZE,
    timeout: float = 900.0,
) -> OtaReport:
    """Run a user's OTA library command (payload already in the vfs) and follow the reboot.

    `vfs_readsize` remounts the vfs with a larger littlefs read size first: MicroPython
    mounts with readsize=32 (a 128-byte cache), so reading a 1.5 MB file costs some
    13,000 emulated flash operations; with 1024 (a 4 KiB cache) whole-block reads go
    straight to flash. The library's code and the file's bytes stay exactly the same.
    None keeps MicroPython's own mount.
    """
    report = _new_report(payload, inspect.read_input(payload), "library")
    clock = time.monotonic()
    report.before = FlashState.read(dev.flash)
    report.target = next_slot(dev)
    if vfs_readsize:
        dev.repl.exec(REMOUNT % vfs_readsize)
    mark = len(dev.console.log.lines)
    dev.repl.exec_start(command, timeout)
    end = dev.console.expect(
        [RESET_BANNER, rb"\x04([^\x04]*)\x04>"],
        timeout,
        during=f"running {command!r}",
        fail_fast=False,
    )
    if end.re is RESET_BANNER:
        report.rebooted = True
        dev.repl.wait_prompt(60)
        report.output = _printable("\n".join(dev.console.log.lines[mark:]))
    else:  # the command returned instead of rebooting
        report.output = dev.console.child.before.decode("utf-8", "replace")
        if end.group(1):
            raise DeviceError(end.group(1).decode("utf-8", "replace"), report.output)
        dev.repl.raw = True
    report.timings["library_s"] = round(time.monotonic() - clock, 3)
    _after_boot(dev, report, mark, confirm)
    report.timings["total_s"] = round(time.monotonic() - clock, 3)
    return report


def reset(dev: Device, *, hard: bool = False, timeout: float = 60.0) -> tuple[str, list[str]]:
    """Reset (machine.reset(), or QMP system_reset when `hard`); return (booted, boot lines)."""
    mark = len(dev.console.log.lines)
    if hard:
        dev.hard_reset()
    else:
        dev.soft_reset()
    dev.console.expect(RESET_BANNER, timeout, during="reset", fail_fast=False)
    dev.repl.wait_prompt(timeout)
    return running(dev), _boot_lines(dev, mark)


def _select_and_reboot(
    dev: Device, report: OtaReport, select: str, confirm: bool, reboot: bool, timeout: float
) -> None:
    assert report.target is not None
    if select == "set_boot":
        find = f"esp32.Partition.find(esp32.Partition.TYPE_APP, label={report.target!r})"
        try:
            dev.repl.exec(f"import esp32\n{find}[0].set_boot()", timeout)
        except DeviceError as exc:
            report.set_boot_error = exc.traceback.splitlines()[-1]
    elif select == "otadata":
        write_otadata(dev, select=report.target)
    elif select != "none":
        raise HarnessError(f"unknown select {select!r}: use set_boot, otadata or none")
    if report.set_boot_error or not reboot:
        report.booted = running(dev)
        report.after = FlashState.read(dev.flash)
        return
    mark = len(dev.console.log.lines)
    start = time.monotonic()
    dev.soft_reset()
    dev.console.expect(RESET_BANNER, 30, during="reboot after set_boot()", fail_fast=False)
    dev.repl.wait_prompt(60)
    report.rebooted = True
    report.timings["reboot_s"] = round(time.monotonic() - start, 3)
    _after_boot(dev, report, mark, confirm)


def _after_boot(dev: Device, report: OtaReport, mark: int, confirm: bool) -> None:
    report.bootloader_lines = _boot_lines(dev, mark)
    report.booted = running(dev)
    if confirm and report.booted == report.target:
        dev.repl.exec("import esp32; esp32.Partition.mark_app_valid_cancel_rollback()")
        report.confirmed = True
    report.after = FlashState.read(dev.flash)


def write_otadata(
    dev: Device,
    *,
    select: str | None = None,
    state: str = "UNDEFINED",
    corrupt: bool = False,
    erase: bool = False,
) -> None:
    """Write otadata from the device, as ESP-IDF lays it out, without validating the app.

    `select` makes the named OTA slot the bootloader's choice: a record with the next
    sequence number that maps to that slot, in the sector not holding the newest one,
    exactly what esp_ota_set_boot_partition() writes after its checks. `corrupt`
    overwrites both records with garbage (bad CRCs, as after a torn write); `erase`
    leaves both blank, as a fresh flash has them.
    """
    flash = dev.flash.read_bytes()
    table = inspect.parse_table(flash)
    records = inspect.read_otadata(flash, table)
    if records is None:
        raise HarnessError("this image has no otadata partition (an OTA layout is needed)")
    blank = b"\xff" * 4096
    if erase:
        sectors = {0: blank, 1: blank}
    elif corrupt:
        sectors = {0: b"\x5a" * 32 + blank[32:], 1: b"\xa5" * 32 + blank[32:]}
    else:
        slots = sorted((p for p in table if p.is_ota_app), key=lambda p: p.subtype)
        names = [p.name for p in slots]
        if select not in names:
            raise HarnessError(f"no OTA slot {select!r} in this image (it has {', '.join(names)})")
        valid = [r for r in records if r.valid]
        newest = max(valid, key=lambda r: r.seq) if valid else None
        seq = (newest.seq if newest else 0) + 1
        while (seq - 1) % len(slots) != names.index(select):
            seq += 1
        codes = {name: code for code, name in inspect.OTA_STATES.items()}
        record = struct.pack("<I20sII", seq, b"\xff" * 20, codes[state], inspect.ota_crc(seq))
        sectors = {1 - newest.sector if newest else 0: record + blank[32:]}
    code = ["import esp32, binascii", "p = esp32.Partition.find(esp32.Partition.TYPE_DATA, 0)[0]"]
    for sector, data in sectors.items():  # writeblocks(n, buf) erases the sector first
        code.append(f"p.writeblocks({sector}, binascii.unhexlify({data.hex()!r}))")
    dev.repl.exec("\n".join(code))


def _printable(text: str) -> str:
    """Drop raw-paste flow-control bytes and colour codes from captured output."""
    return re.sub(r"\x1b\[[0-9;]*m|[\x00-\x08\x0b-\x1f\x7f]|\ufffd", "", text)


def _boot_lines(dev: Device, mark: int) -> list[str]:
    lines = []
    for line in dev.console.log.lines[mark:]:
        found = BOOT_LINE.match(line.strip())
        if found:
            lines.append(f"{found.group(1)} ({found.group(2)}) {found.group(3)}: {found.group(4)}")
    return lines


def _new_report(payload: Path, data: bytes, method: str) -> OtaReport:
    kind = inspect.classify(data)
    if kind in ("app", "firmware", "flash"):
        verdict = inspect.report(payload)["ota_payload"]["verdict"]
    else:
        verdict = f"not an app image ({kind})"
    return OtaReport(str(payload), kind, str(verdict), method)


def _slot(flash: Path, name: str) -> inspect.Partition:
    table = inspect.parse_table(flash.read_bytes()[: inspect.TABLE_OFFSET + 0x1000])
    part = next((p for p in table if p.name == name and p.type == inspect.APP_TYPE), None)
    if part is None:
        raise HarnessError(f"no app partition named {name!r} in this image")
    return part


TRAILER = b"\xff" * 512  # pushes the payload's last bytes out of the UART's RX FIFO


def _send(dev: Device, data: bytes) -> None:
    """Payload, then filler the writer never reads.

    ESP-IDF's UART driver moves bytes from the hardware FIFO to its buffer when the FIFO
    passes a threshold or on the RX-timeout interrupt; under QEMU, ESP-IDF 5.0 builds
    (v1.22.0) never got that timeout, and the last few dozen bytes of a payload stayed
    in the FIFO ("data channel stalled at byte 1545073 of 1545088"). The filler pushes
    them through; the writer reads exactly the payload's length, and deinit() drops the
    rest.
    """
    sock = dev.machine.data
    if sock is not None:
        with contextlib.suppress(OSError):  # QEMU went away; the REPL side reports why
            sock.sendall(data + TRAILER)
