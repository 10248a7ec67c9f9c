"""Cell results for the report tests, without QEMU, written as the runner writes them: a
skipped cell by the runner itself; a cell that ran, from typed values through the
writers of harness.scenario.results (result.json, timeline.json, the flash summaries)
beside a serial log with the starting report's real bootloader lines."""

from __future__ import annotations

import struct
import textwrap
from pathlib import Path
from typing import Any

from harness.emulator.device import Boot
from harness.emulator.ota import OtaReport
from harness.flash import formats
from harness.scenario import format as scenario_format
from harness.scenario import plan, runner, steps
from harness.scenario.results import (
    Attempt,
    CellId,
    CellResult,
    FirmwareUsed,
    FlashSummary,
    StepRecord,
    Violation,
    write_timeline,
)
from harness.sources.manifest import FirmwareSelector

MB = 1 << 20
REFUSED = [  # what the bootloader printed for the starting report (v1.25.0, 16MB)
    "E (512) esp_image: Segment 0 0x3fff0030-0x3fff134c invalid: overlaps bootloader data",
    "E (518) boot: OTA app partition slot 1 is not bootable",
]
SERIAL = [
    "rst:0x1 (POWERON_RESET),boot:0x12 (SPI_FAST_FLASH_BOOT)",
    "MicroPython v1.25.0 on 2025-04-15; Generic ESP32 module with ESP32",
    ">>> ",
    "-- the harness staged full-image into ota_1",
    "rst:0xc (SW_CPU_RESET),boot:0x12 (SPI_FAST_FLASH_BOOT)",
    *REFUSED,
    "MicroPython v1.25.0 on 2025-04-15; Generic ESP32 module with ESP32",
    ">>> ",
]
FULL_IMAGE = 0x150000  # bytes of the full image written into ota_1


def _entry(name: str, ptype: int, subtype: int, offset: int, size: int) -> bytes:
    return b"\xaa\x50" + struct.pack("<BBII16sI", ptype, subtype, offset, size, name.encode(), 0)


def flash(size_mb: int, ota_1: bytes = b"") -> bytes:
    """MicroPython's OTA table (v1.26 on: the filesystem after the last partition), otadata
    selecting ota_0, and `ota_1` written at ota_1's offset."""
    data = bytearray(b"\xff" * size_mb * MB)
    table = [_entry("nvs", 1, 0x02, 0x9000, 0x4000), _entry("otadata", 1, 0x00, 0xD000, 0x2000),
             _entry("phy_init", 1, 0x01, 0xF000, 0x1000),
             _entry("ota_0", 0, 0x10, 0x10000, 0x180000),
             _entry("ota_1", 0, 0x11, 0x190000, 0x180000)]  # fmt: skip
    data[formats.TABLE_OFFSET : formats.TABLE_OFFSET + 32 * len(table)] = b"".join(table)
    data[0xD000 : 0xD000 + 32] = formats.encode_ota_record(1, "VALID")
    data[0x190000 : 0x190000 + len(ota_1)] = ota_1
    return bytes(data)


def record(index: int, kind: str, start: float, took: float, detail: Any = None,
           status: str = "passed") -> StepRecord[Any]:  # fmt: skip
    return StepRecord.of(kind)(index=index, step=kind, line=4 + index, start_s=start,
                               elapsed_s=took, status=status, detail=detail)  # fmt: skip


def ran(artifacts: Path, cell: CellId, guarded: bool = False) -> CellResult:
    """The starting report at `cell`: a full image staged into ota_1, refused by the
    bootloader, the board back on ota_0. `guarded`: a `not_expect` on the bootloader's
    line made it fail there (as console and runner record it)."""
    folder = artifacts / cell.name
    folder.mkdir(parents=True)
    size = int(cell.flash_size.removesuffix("MB"))
    before = flash(size)
    after = flash(size, b"\xe9" + b"\x00" * (FULL_IMAGE - 1))
    state = formats.FlashState.of(after)
    ota = OtaReport("full-image", "firmware", "staged", target="ota_1", bytes_written=FULL_IMAGE,
                    set_boot_error=None, rebooted=True, bootloader_lines=REFUSED, booted="ota_0",
                    before=formats.FlashState.of(before), after=state)  # fmt: skip
    timeline = [record(1, "boot", 0.0, 2.1, steps.BootDetail())]
    if guarded:
        timeline += [record(2, "not_expect", 2.1, 0.0),
                     record(3, "ota", 2.1, 3.4, status="failed")]  # fmt: skip
        violation = Violation("overlaps bootloader data", REFUSED[0], 3)
        message = (f"{cell.name}: step 3 `ota` (guarded.yaml:7) failed: any wording the console "
                   f"likes\n  artifacts: {folder}")  # fmt: skip
    else:
        timeline += [record(2, "ota", 2.1, 3.4, ota),
                     record(3, "expect", 5.5, 0.1, steps.Matched(list(REFUSED))),
                     record(4, "assert_booted", 5.6, 0.2, Boot("ota_0", []))]  # fmt: skip
        violation, message = None, ""
    status = "failed" if guarded else "passed"
    result = CellResult(
        cell=cell, status=status, message=message, elapsed_s=6.0, artifacts=str(folder),
        booted="ota_0", attempts=[Attempt(1, status, message, str(folder))], timeline=timeline,
        matched=[] if guarded else list(REFUSED), violation=violation,
        firmware=FirmwareUsed("/fw/ESP32_GENERIC_OTA-20250415-v1.25.0.bin", cell.firmware,
                              "ab" * 32, "ESP32_GENERIC-OTA@v1.25.0", True, "local"),
        watchdogs=False, scenario=f"scenarios/{cell.scenario}.yaml", title="the starting report",
    )  # fmt: skip
    (folder / "serial.log").write_text(
        "".join(f"[{0.5 * i:9.3f}] {line}\n" for i, line in enumerate(SERIAL))
    )
    FlashSummary.of(before).write(folder, "before")
    FlashSummary.of(after, since=before).write(folder, "after")
    write_timeline(folder, timeline)
    result.write(folder)
    return result


SKIPS = """\
    title: a release that cannot be had here
    source: tests/cells.py
    matrix: {flash_size: [%s], firmware: [ESP32_GENERIC-OTA@v1.25.0]}
    steps:
      - boot: prompt
"""


def skipped(artifacts: Path, size: str, work: Path) -> list[CellResult]:
    """Cells the runner itself skips and writes: their firmware is in no folder, and
    nothing may be downloaded."""
    path = work / "unavailable-release.yaml"
    path.write_text(textwrap.dedent(SKIPS % size))
    empty = work / "no-firmware"
    chooser = FirmwareSelector(local=empty, cache=empty, download=False)
    cells = plan.cells(scenario_format.load(path), chooser, plan.RunOptions())
    assert all(isinstance(c, plan.Skipped) for c in cells)
    return [runner.run_cell(c, runner.Setup(artifacts)) for c in cells]
