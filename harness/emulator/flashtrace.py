"""The flash operations a running QEMU makes, from its m25p80 flash model's trace events.

QEMU's flash chip model reports each erase (`m25p80_flash_erase`, `m25p80_chip_erase`),
each command with its address (`m25p80_complete_collecting`) and each programmed byte
(`m25p80_page_program`). The machine writes them to a trace file (QEMU's `log` trace
backend, `-D`) only while a recording is on: they are switched on and off over QMP, so a
boot pays nothing for them. A page program is one command (`PP` and its kin) and the
bytes after it, up to the next event.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import HarnessError
from ..flash.distinct import ReadSet
from ..flash.ops import FlashOp

# switched on and off around a recording; `m25p80_chip_erase` is given on the command line
# (no guest erases the whole chip) so that QEMU's trace log is open from the start
EVENTS = (
    "m25p80_flash_erase",
    "m25p80_chip_erase",
    "m25p80_complete_collecting",
    "m25p80_page_program",
)
ALWAYS_ON = "m25p80_chip_erase"
TRACE_FILE = "flash-ops.trace"  # in the run's folder; a served board's restarts: flash-ops.N.trace
# page program commands: PP, PP4, QPP, QPP4, and the 4-byte quad variants
PROGRAM_COMMANDS = frozenset({0x02, 0x12, 0x32, 0x34, 0x38, 0x3E})
_EVENT = re.compile(r"^(?:\d+@[\d.]+:)?(m25p80_\w+) \[[^\]]*\] (.*)$")
_ERASE = re.compile(r"offset = 0x([0-9a-f]+), len = (\d+)")
_COLLECTED = re.compile(r"decode cmd: 0x([0-9a-f]+) .*addr 0x([0-9a-f]+)")
_BYTE = re.compile(r"cur_addr=0x([0-9a-f]+) data=0x([0-9a-f]+)")

# What a power-on reads (harness.flash.distinct): each byte the flash chip sends in its
# READ state (`m25p80_read_byte`; the ESP32's SPI controllers reach the chip only
# through it), and each MMIO write, of which those to the cache MMU tables in DPORT
# (QEMU's hw/misc/esp32_dport.c) say which 64 KB flash page the cache loads next.
READ_EVENTS = ("m25p80_read_byte", "memory_region_ops_write")
_READ = re.compile(r"Read byte 0x([0-9a-f]+)=")
# the cache MMU tables, DR_REG_FLASH_MMU_TABLE_PRO and _APP: 256 entries of 4 bytes each
# (QEMU models the first 128, DROM0 then IRAM0: more is a harmless over-approximation).
# QEMU traces an MMIO write at its absolute address (memory_region_to_absolute_addr).
MMU_TABLES = ((0x3FF10000, 0x3FF10400), (0x3FF12000, 0x3FF12400))
_MMIO = re.compile(
    r"addr 0x(3ff1[0-9a-f]{4}) value 0x([0-9a-f]+) size \d+ name 'misc\.esp32\.dport'"
)
MMU_PAGE = 0x10000
MMU_INVALID = 0x100  # the entry's invalid bit (ESP32_CACHE_MMU_INVALID_VAL, SOC_MMU_INVALID)
MMU_ENTRY = 0x1FF


def parse_reads(text: str, flash_size: int) -> ReadSet:
    """The bytes a power-on read: the chip's byte reads, and every page an MMU entry was
    set to, with page 0, which QEMU's cache maps at reset (every entry 0)."""
    spans = [(int(a, 16), int(a, 16) + 1) for a in set(_READ.findall(text))]
    pages = {0}
    for addr, value in _MMIO.findall(text):
        at = int(addr, 16)
        entry = int(value, 16) & MMU_ENTRY
        if any(lo <= at < hi for lo, hi in MMU_TABLES) and not entry & MMU_INVALID:
            pages.add(entry)
    spans += [(p * MMU_PAGE, min((p + 1) * MMU_PAGE, flash_size)) for p in pages
              if p * MMU_PAGE < flash_size]  # fmt: skip
    return ReadSet.of(spans)


def parse(lines: Iterable[str], flash_size: int) -> list[FlashOp]:
    """The erases and page programs in trace lines, in the order the chip saw them."""
    reader = _Reader(flash_size)
    for line in lines:
        event = _EVENT.match(line)
        if event is not None:
            reader.event(*event.groups())
    reader.end_program()
    return reader.ops


class _Reader:
    """Trace events in, operations out; a page program is collected byte by byte."""

    def __init__(self, flash_size: int) -> None:
        self.flash_size = flash_size
        self.ops: list[FlashOp] = []
        self.start, self.data = -1, bytearray()  # the program being collected (-1: none)

    def end_program(self) -> None:
        if self.start >= 0 and self.data:
            self.ops.append(FlashOp("program", self.start, len(self.data), bytes(self.data)))
        self.start = -1
        self.data = bytearray()

    def event(self, name: str, text: str) -> None:
        if name == "m25p80_page_program":
            self.byte(text)
            return
        self.end_program()
        if name == "m25p80_flash_erase":
            erase = _ERASE.search(text)
            if erase:
                self.ops.append(FlashOp("erase", int(erase.group(1), 16), int(erase.group(2))))
        elif name == "m25p80_chip_erase":
            self.ops.append(FlashOp("erase", 0, self.flash_size))
        elif name == "m25p80_complete_collecting":
            cmd = _COLLECTED.search(text)
            if cmd and int(cmd.group(1), 16) in PROGRAM_COMMANDS:
                self.start = int(cmd.group(2), 16)

    def byte(self, text: str) -> None:
        byte = _BYTE.search(text)
        if byte is None or self.start < 0:
            return
        addr = int(byte.group(1), 16)
        if addr != self.start + len(self.data):  # not where the command's bytes go
            start = addr
            self.end_program()
            self.start = start
        self.data.append(int(byte.group(2), 16))


class TraceFile:
    """The trace written since `mark()`: by one QEMU, or by each of the QEMUs a served
    board went through (`handover`), in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._parts: list[tuple[Path, int]] = []  # (file, where the recording starts in it)

    def mark(self) -> None:
        self._parts = [(self.path, self.path.stat().st_size if self.path.exists() else 0)]

    def handover(self, keep: Path) -> None:
        """The QEMU writing `path` has quit: keep what it wrote as `keep`, for the next
        QEMU starts the file anew."""
        if not self._parts or not self.path.exists():
            return
        self.path.replace(keep)
        self._parts = [*self._parts[:-1], (keep, self._parts[-1][1]), (self.path, 0)]

    def ops(self, flash_size: int) -> list[FlashOp]:
        return parse(self.text().splitlines(), flash_size)

    def reads(self, flash_size: int) -> ReadSet:
        return parse_reads(self.text(), flash_size)

    def text(self) -> str:
        if not self.path.exists():
            raise HarnessError(f"QEMU wrote no flash trace ({self.path}): it cannot report "
                               "its flash operations")  # fmt: skip
        parts: list[str] = []
        for path, start in self._parts or [(self.path, 0)]:
            if path.exists():
                with path.open("r", errors="replace") as f:
                    f.seek(start)
                    parts.append(f.read())
        return "".join(parts)
