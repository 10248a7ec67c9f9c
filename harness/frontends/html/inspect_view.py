"""`harness inspect FILE --html`: one file drawn for a bug report.

Two pictures: the flash as the file's partition table lays it out, to scale, with the
stretch the file covers once flashed; and, for the verdict on sending it by OTA, where
the segments of the file read as an app image would load, over its chip's internal DRAM
(harness.chips), where the bootloader keeps its own data and stack (a full image's first
segment is the bootloader's, and lands there: "overlaps bootloader data").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import chips
from ...flash import formats
from ...flash.inputs import read_input
from ...flash.inspect import FileReport
from ...flash.size import FlashSize
from . import partmap


@dataclass(frozen=True)
class SegmentBox:
    addr: int
    length: int
    x: float
    width: float
    overlaps: bool  # inside the bootloader's own memory


@dataclass(frozen=True)
class InspectView:
    file: str
    kind: str
    summary: str
    verdict: str
    payload_ok: bool
    maps: list[partmap.FlashMap]
    segments: list[SegmentBox]  # in DRAM, drawn
    others: list[tuple[int, int]]  # (addr, length) of segments elsewhere, listed
    reserved: tuple[float, float]  # the bootloader's memory, as (x, width)
    facts: dict[str, Any]
    chip: str  # whose DRAM is drawn: the file's chip, or the default one (harness.chips)
    dram: tuple[int, int]  # its internal DRAM, as drawn
    bootloader_dram: tuple[int, int]  # the bootloader's data and stack in it


def of(path: Path, report: FileReport) -> InspectView:
    maps: list[partmap.FlashMap] = []
    parts = list(report.table or ())
    chip = chips.by_name(report.chip) or chips.DEFAULT
    if parts and report.flash_size:
        size = FlashSize.parse(report.flash_size).bytes
        start = {"firmware": chip.bootloader_offset, "flash": 0}.get(report.kind)
        length = report.size
        written = ((f"this file, {partmap.size_text(length)}, flashed at", start, length),) \
            if start is not None else ()  # fmt: skip
        boot = report.boot
        layout = partmap.Layout(
            path.name, size, partmap.regions(parts, report.filesystem, size, chip),
            written=written, otadata=partmap.records(report.otadata),
            selects=boot.slot if boot else None, reason=boot.reason if boot else "",
        )  # fmt: skip
        maps = partmap.both(layout)
    as_app = formats.check_app(read_input(path), chip=chip.name)  # as an OTA would send it
    dram = chip.dram or chips.DEFAULT.dram or (0, 1)
    scale = partmap.WIDTH / (dram[1] - dram[0])
    low, high = chip.bootloader_dram or (0, 0)
    segments, others = [], []
    for seg in as_app.segments:
        if dram[0] <= seg.addr < dram[1]:
            end = min(seg.addr + seg.length, dram[1])
            segments.append(SegmentBox(seg.addr, seg.length, round((seg.addr - dram[0]) * scale, 2),
                                       max(round((end - seg.addr) * scale, 2), 2.0),
                                       chip.overlaps_bootloader(seg.addr, end)))  # fmt: skip
        else:
            others.append((seg.addr, seg.length))
    facts = {k: v for k, v in (("chip", report.chip), ("flash_size", report.flash_size),
                               ("size", report.size), ("sha256", report.sha256)) if v}  # fmt: skip
    return InspectView(
        str(path), report.kind, report.summary, report.ota_payload.verdict,
        report.ota_payload.ok, maps, segments, others,
        (round((low - dram[0]) * scale, 2), round((high - low) * scale, 2)), facts,
        chip.name.upper(), dram, (low, high),
    )  # fmt: skip
