"""A flash drawn to scale: partitions as boxes on a line of `WIDTH` units, and what a run
wrote over them, from the flash summaries a cell leaves (results.FlashSummary) or from
what `harness inspect` read of a file (inspect.FileReport).

Offsets map linearly to x, so a box's x and width say where a partition is; the SVG
carries them (and the offset and size in bytes) for people and for the browser tests.
The first 64 KB (bootloader, table, nvs, otadata) are slivers at 16MB: `both` draws a
second line for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ... import chips
from ...chips import Chip
from ...flash import formats

WIDTH = 1000.0  # SVG user units across the flash
Region = tuple[str, str, int, int]  # (name, kind, offset, size)
ZOOM_END = 0x10000  # the small regions before the first app


class Part(Protocol):
    """A partition as a table names it (formats.Partition, a flash summary's entry)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class Record:
    """One otadata record as the report shows it."""

    sector: int
    seq: str
    state: str
    crc_ok: bool
    valid: bool


@dataclass(frozen=True)
class Box:
    """One region of the flash, to scale."""

    name: str
    kind: str  # bootloader | table | app | data | fs | free
    offset: int
    size: int
    x: float
    width: float
    booted: bool = False  # the partition MicroPython ran from
    selected: bool = False  # the slot otadata selects

    @property
    def label(self) -> str:
        return f"{self.name} @ {self.offset:#x}, {size_text(self.size)}"


@dataclass(frozen=True)
class Mark:
    """A stretch the run wrote (or a cut left half-written), over the boxes."""

    label: str
    offset: int
    size: int
    x: float
    width: float


@dataclass(frozen=True)
class Layout:
    """What a map is drawn from: the regions of one flash, and what the run made of it."""

    title: str
    flash_size: int
    regions: tuple[tuple[str, str, int, int], ...]  # (name, kind, offset, size), see `regions`
    booted: str | None = None
    written: tuple[tuple[str, int, int], ...] = ()  # (label, offset, size)
    otadata: tuple[Record, ...] = ()
    selects: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class FlashMap:
    """A layout drawn over [start, end): its boxes and marks, in SVG units."""

    layout: Layout
    start: int
    end: int
    boxes: list[Box]
    marks: list[Mark]

    @property
    def zoomed(self) -> bool:
        return self.start != 0 or self.end != self.layout.flash_size


def size_text(n: int) -> str:
    """`1.5 MB`, `12.9 MB`, `28 KB`, `96 bytes`."""
    for unit, div in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def regions(partitions: Sequence[Part], fs: formats.FsRegion | None,
            flash_size: int, chip: Chip = chips.DEFAULT) -> tuple[Region, ...]:  # fmt: skip
    """(name, kind, offset, size) for every region of the flash, gaps as `free`; the
    bootloader's where `chip`'s ROM looks for it."""
    boot = chip.bootloader_offset
    found = [("bootloader", "bootloader", boot, formats.TABLE_OFFSET - boot),
             ("partition table", "table", formats.TABLE_OFFSET, formats.SECTOR)]  # fmt: skip
    for p in partitions:
        kind = "app" if p.type == formats.APP_TYPE else "data"
        if p.name in formats.FS_LABELS and kind == "data":
            kind = "fs"
        found.append((p.name, kind, p.offset, p.size))
    if fs is not None and not fs.in_table:
        found.append((f"{fs.label} (made at boot)", "fs", fs.offset, fs.size))
    found.sort(key=lambda r: r[2])
    out, at = [], 0
    for name, kind, offset, size in found:
        if offset > at:
            out.append(("free", "free", at, offset - at))
        out.append((name, kind, offset, size))
        at = max(at, offset + size)
    if at < flash_size:
        out.append(("free", "free", at, flash_size - at))
    return tuple(out)


def draw(layout: Layout, span: tuple[int, int] | None = None) -> FlashMap:
    """The layout over `span` (default: the whole flash), offsets scaled to `WIDTH`."""
    start, end = span or (0, layout.flash_size)
    scale = WIDTH / (end - start)

    def clip(offset: int, size: int) -> tuple[float, float] | None:
        lo, hi = max(offset, start), min(offset + size, end)
        return (round((lo - start) * scale, 3), round((hi - lo) * scale, 3)) if hi > lo else None

    boxes = [Box(name, kind, offset, size, *where, booted=name == layout.booted,
                 selected=name == layout.selects)
             for name, kind, offset, size in layout.regions
             if (where := clip(offset, size)) is not None]  # fmt: skip
    marks = [Mark(label, offset, size, *where) for label, offset, size in layout.written
             if (where := clip(offset, size)) is not None]  # fmt: skip
    return FlashMap(layout, start, end, boxes, marks)


def both(layout: Layout) -> list[FlashMap]:
    """The whole flash, and its first 64 KB where the small regions are."""
    return [draw(layout), draw(layout, (0, min(ZOOM_END, layout.flash_size)))]


def records(otadata: Sequence[formats.OtaRecord] | None) -> tuple[Record, ...]:
    """otadata records as drawn, seq `blank` where never written."""
    return tuple(
        Record(r.sector, "blank" if r.seq == formats.BLANK_SEQ else str(r.seq), r.state,
               r.crc_ok, r.valid)
        for r in otadata or ()
    )  # fmt: skip
