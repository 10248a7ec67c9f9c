"""Firmware for chips whose bootloader sits at 0x0 (C3, S3, C6, H2) is named for what it is.

The files are made here as those chips' official builds lay them out: bootloader at 0x0,
partition table at 0x8000, app at 0x10000, each image built with esptool's own image
class for the chip, the app starting with ESP-IDF's esp_app_desc_t as every app does.
`inspect` reads them as full firmware for their chip; `boot` and `run` refuse them in one
line, since QEMU's esp32 machine runs only ESP32 images.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from esptool import bin_image

from harness.flash import formats
from harness.flash import inspect as inspector

# chip -> (esptool image class, a DRAM and an IRAM load address of its bootloader, the
# app's rodata and code addresses in flash; the rodata, with esp_app_desc_t, comes first)
CHIPS = {
    "esp32c3": (bin_image.ESP32C3FirmwareImage, 0x3FCD5820, 0x403CC710, 0x3C0A0020, 0x42000020),
    "esp32s3": (bin_image.ESP32S3FirmwareImage, 0x3FCE3808, 0x403C9700, 0x3C0B0020, 0x42000020),
    "esp32c6": (bin_image.ESP32C6FirmwareImage, 0x4086C410, 0x4086E610, 0x42000020, 0x42080020),
    "esp32h2": (bin_image.ESP32H2FirmwareImage, 0x4083CD30, 0x4083EF20, 0x42000020, 0x42060020),
}
IDF, BUILT = "v5.5.1", ("Apr  6 2026", "13:16:34")


def _image(cls: type, segments: list[tuple[int, bytes]]) -> bytes:
    img = cls()
    img.flash_size_freq = 0x20  # 4MB
    for addr, data in segments:
        seg = bin_image.ImageSegment(addr, data)
        seg.name = ""
        img.segments.append(seg)
    img.entrypoint = segments[-1][0]
    return img.save(None)


def _app_desc() -> bytes:
    """esp_app_desc_t: magic, secure version, reserved, version, project, time, date, IDF."""

    def text(s: str, n: int) -> bytes:
        return s.encode().ljust(n, b"\0")

    return (
        struct.pack("<IIII", formats.APP_DESC_MAGIC, 0, 0, 0)
        + text("v1.28.0", 32) + text("micropython", 32) + text(BUILT[1], 16)
        + text(BUILT[0], 16) + text(IDF, 32) + bytes(144)
    )  # fmt: skip


def _entry(name: str, ptype: int, subtype: int, offset: int, size: int) -> bytes:
    return struct.pack("<2sBBII16sI", formats.TABLE_MAGIC, ptype, subtype, offset, size,
                       name.encode(), 0)  # fmt: skip


def firmware_for(chip: str) -> bytes:
    """A firmware .bin laid out as the chip's official builds are (from 0x0)."""
    cls, dram, iram, drom, irom = CHIPS[chip]
    boot = _image(cls, [(dram, b"\x11" * 0x200), (iram, b"\x13" * 0x800)])
    banner = b"MicroPython v1.28.0 on 2026-04-06; Generic module with " + chip.upper().encode()
    app = _image(cls, [(drom, _app_desc() + banner), (irom, b"\x13" * 0x1000)])
    table = (_entry("nvs", 1, 2, 0x9000, 0x6000) + _entry("phy_init", 1, 1, 0xF000, 0x1000)
             + _entry("factory", 0, 0, 0x10000, 0x1F0000)
             + _entry("vfs", 1, 0x81, 0x200000, 0x200000))  # fmt: skip
    data = bytearray(b"\xff" * (0x10000 + len(app)))
    data[: len(boot)] = boot
    data[0x8000 : 0x8000 + len(table)] = table
    data[0x10000:] = app
    return bytes(data)


@pytest.fixture(params=sorted(CHIPS))
def chip_file(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    chip = request.param
    path = tmp_path / f"ESP32_GENERIC_{chip[5:].upper()}-20260406-v1.28.0.bin"
    path.write_bytes(firmware_for(chip))
    return chip, path


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_inspect_reads_the_whole_firmware_of_a_chip_with_its_bootloader_at_0(chip_file) -> None:
    chip, path = chip_file
    rep = inspector.examine(path).to_json()
    assert rep["kind"] == "firmware" and rep["chip"] == chip
    assert [p["name"] for p in rep["partitions"]] == ["nvs", "phy_init", "factory", "vfs"]
    assert rep["app"]["chip"] == chip
    assert rep["app"]["idf_version"] == IDF
    assert rep["app"]["built"] == f"{BUILT[0]} {BUILT[1]}"
    assert rep["slots"]["factory"]["ok"], rep["slots"]["factory"]
    assert f"full firmware image (bootloader + partition table + app) for {chip}" in rep["summary"]
    assert "runs only ESP32 images" in rep["ota_payload"]["verdict"]
    run = harness("inspect", str(path), "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["chip"] == chip


@pytest.mark.parametrize("command", ["boot", "run"])
def test_boot_and_run_refuse_another_chips_firmware_in_one_line(chip_file, command) -> None:
    chip, path = chip_file
    scenario = Path(__file__).parent.parent / "scenarios" / "boot-loop.yaml"
    args = ["boot", str(path)] if command == "boot" else ["run", str(scenario), "--firmware",
                                                          str(path)]  # fmt: skip
    run = harness(*args)
    assert run.returncode == 2, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"built for {chip}" in lines[0] and "runs only ESP32 images" in lines[0]


def test_an_esp32_firmware_is_still_read_at_0x1000(fw) -> None:
    data = fw("OTA-20250415-v1.25.0").read_bytes()
    assert formats.classify(data) == "firmware" and formats.firmware_offset(data) == 0x1000
    assert formats.as_flash(data)[0x1000:0x1010] == data[:16]
