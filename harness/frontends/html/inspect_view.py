"""`harness inspect FILE --html`: one file drawn for a bug report.

Two pictures: the flash as the file's partition table lays it out, to scale, with the
stretch the file covers once flashed; and, for the verdict on sending it by OTA, where
the segments of the file read as an app image would load, over the ESP32's internal
DRAM, where the bootloader keeps its own data and stack (a full image's first segment is
the bootloader's, and lands there: "overlaps bootloader data").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...flash import formats
from ...flash.inputs import read_input
from ...flash.inspect import FileReport
from ...flash.size import FlashSize
from . import partmap

DRAM = (0x3FFA_E000, 0x4000_0000)  # the ESP32's internal DRAM, as the bootloader sees it


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


def of(path: Path, report: FileReport) -> InspectView:
    maps: list[partmap.FlashMap] = []
    parts = list(report.table or ())
    if parts and report.flash_size:
        size = FlashSize.parse(report.flash_size).bytes
        at = formats.BOOTLOADER_OFFSETS.get(str(report.chip), 0x1000)
        start = {"firmware": at, "flash": 0}.get(report.kind)
        length = report.size
        written = ((f"this file, {partmap.size_text(length)}, flashed at", start, length),) \
            if start is not None else ()  # fmt: skip
        boot = report.boot
        layout = partmap.Layout(
            path.name, size, partmap.regions(parts, report.filesystem, size),
            written=written, otadata=partmap.records(report.otadata),
            selects=boot.slot if boot else None, reason=boot.reason if boot else "",
        )  # fmt: skip
        maps = partmap.both(layout)
    as_app = formats.check_app(read_input(path))  # the file as an OTA would send it
    scale = partmap.WIDTH / (DRAM[1] - DRAM[0])
    low, high = formats.BOOTLOADER_DRAM
    segments, others = [], []
    for seg in as_app.segments:
        if DRAM[0] <= seg.addr < DRAM[1]:
            end = min(seg.addr + seg.length, DRAM[1])
            segments.append(SegmentBox(seg.addr, seg.length, round((seg.addr - DRAM[0]) * scale, 2),
                                       max(round((end - seg.addr) * scale, 2), 2.0),
                                       seg.addr < high and end > low))  # fmt: skip
        else:
            others.append((seg.addr, seg.length))
    facts = {k: v for k, v in (("chip", report.chip), ("flash_size", report.flash_size),
                               ("size", report.size), ("sha256", report.sha256)) if v}  # fmt: skip
    return InspectView(
        str(path), report.kind, report.summary, report.ota_payload.verdict,
        report.ota_payload.ok, maps, segments, others,
        (round((low - DRAM[0]) * scale, 2), round((high - low) * scale, 2)), facts,
    )  # fmt: skip
