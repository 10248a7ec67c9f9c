"""Firmware for chips whose bootloader sits at 0x0 (C3, S3, C6, H2) is named for what it is.

The files are made here as those chips' official builds lay them out: bootloader at 0x0,
partition table at 0x8000, app at 0x10000, each image built with esptool's own image
class for the chip, the app starting with ESP-IDF's esp_app_desc_t as every app does.
`inspect` reads them as full firmware for their chip, by its profile (harness.chips);
`boot` and `run` refuse them in the one line the profile gives, before anything is built.
The ESP32-C3 has a whole profile: its bootloader's memory (an OTA of a full image is
judged), its images build (harness.flash), its ROM's reset words, its QEMU machine.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from esptool import bin_image

from harness import chips
from harness.emulator import launch, policy
from harness.emulator.qemu import Machine, MachineSetup, find_qemu
from harness.errors import (
    BootLoop,
    ImageError,
    UnexpectedReset,
    WatchdogBootLoop,
    WatchdogReset,
)
from harness.flash import formats, images
from harness.flash import inspect as inspector
from harness.flash.firmware import FirmwareFacts
from harness.flash.size import FlashSize

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
    verdict = rep["ota_payload"]["verdict"]
    assert f"full firmware image for {chip}" in verdict and "not an app image" in verdict
    assert chips.by_name(chip).why_not() in verdict  # the profile's one line: it cannot boot
    run = harness("inspect", str(path), "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["chip"] == chip


@pytest.mark.parametrize("command", ["boot", "run"])
def test_boot_and_run_refuse_another_chips_firmware_in_one_line(chip_file, command, tmp_path,
                                                                monkeypatch) -> None:  # fmt: skip
    chip, path = chip_file
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    scenario = Path(__file__).parent.parent / "scenarios" / "boot-loop.yaml"
    args = ["boot", str(path)] if command == "boot" else ["run", str(scenario), "--firmware",
                                                          str(path)]  # fmt: skip
    run = harness(*args)
    assert run.returncode == 2, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"{path} is built for {chip}: {chips.by_name(chip).why_not()}" in lines[0], lines[0]
    assert not list((tmp_path / "cache").glob("*.bin"))  # refused before any image was built


def test_an_esp32_firmware_is_still_read_at_0x1000(fw) -> None:
    data = fw("OTA-20250415-v1.25.0").read_bytes()
    assert formats.classify(data) == "firmware" and formats.firmware_offset(data) == 0x1000
    assert formats.as_flash(data)[0x1000:0x1010] == data[:16]


def test_an_esp32c3_image_builds_with_its_bootloader_at_0(tmp_path) -> None:
    """flash/ takes the C3 as its profile says: the image is laid out from 0x0, and
    inspected as the C3 firmware it is, with the filesystem MicroPython would find."""
    path = tmp_path / "ESP32_GENERIC_C3-20260406-v1.28.0.bin"
    data = firmware_for("esp32c3")
    path.write_bytes(data)
    built = images.build_image(images.Recipe(path, FlashSize(4)), tmp_path / "cache")
    flash = built.path.read_bytes()
    assert len(flash) == 4 << 20 and flash[: len(data)] == data  # from 0x0, not 0x1000
    assert FirmwareFacts.read(path).chip is chips.ESP32C3
    rep = inspector.examine(built.path).to_json()
    assert rep["chip"] == "esp32c3" and rep["slots"]["factory"]["ok"]
    assert rep["filesystem"]["offset"] == 0x200000 and rep["filesystem"]["in_table"]


def test_the_c3_bootloaders_memory_is_its_own() -> None:
    """A C3 full image sent by OTA: its first segment (the bootloader's, at 0x3fcd5820 as
    ESP-IDF v5 builds it) loads into the C3 bootloader's memory, which the bootloader
    refuses; the same address is ordinary DRAM on an ESP32 and the reverse holds too."""
    verdict = inspector.payload_verdict("firmware", formats.check_app(firmware_for("esp32c3")))
    assert "its first segment loads at 0x3fcd5820" in verdict
    assert "'overlaps bootloader data'" in verdict
    assert chips.ESP32C3.overlaps_bootloader(0x3FCD5820, 0x3FCD5A20)
    assert not chips.ESP32.overlaps_bootloader(0x3FCD5820, 0x3FCD5A20)
    assert chips.ESP32.overlaps_bootloader(0x3FFF0030, 0x3FFF1000)
    assert not chips.ESP32C3.overlaps_bootloader(0x3FFF0030, 0x3FFF1000)


@pytest.mark.parametrize(
    ("chip", "reasons", "kind"),
    [
        (chips.ESP32, ["POWERON_RESET", "TG1WDT_SYS_RESET", "RTCWDT_RTC_RESET"], WatchdogBootLoop),
        (chips.ESP32, ["POWERON_RESET", "SW_CPU_RESET", "SW_CPU_RESET"], BootLoop),
        (chips.ESP32, ["POWERON_RESET", "RTCWDT_BROWN_OUT_RESET"], BootLoop),  # a brown-out
        (chips.ESP32C3, ["POWERON", "TG0WDT_SYS_RST", "TG1WDT_SYS_RST"], WatchdogBootLoop),
        (chips.ESP32C3, ["POWERON", "RTC_SW_CPU_RST", "RTC_SW_CPU_RST"], BootLoop),
        (chips.ESP32C3, ["POWERON_RESET", "TG1WDT_SYS_RESET"], BootLoop),  # not the C3's words
    ],
)
def test_reset_reasons_are_read_by_the_chips_own_words(chip, reasons, kind) -> None:
    assert type(BootLoop.of("loop", reasons, chip)) is kind
    last = reasons[-1]
    single = WatchdogReset if kind is WatchdogBootLoop else UnexpectedReset
    assert type(UnexpectedReset.of("reset", last, chip)) is single


def test_an_esp32c3_cannot_boot_here_and_says_so_in_one_line(tmp_path) -> None:
    """The policy refuses it before a build; the machine and the QEMU search refuse it too
    (a policy made by hand), each with the profile's line, never with a traceback."""
    why = chips.ESP32C3.why_not()
    assert "USB-Serial/JTAG" in why and "not emulated" in why and "\n" not in why
    path = tmp_path / "c3.bin"
    path.write_bytes(firmware_for("esp32c3"))
    with pytest.raises(ImageError, match=re.escape(f"{path} is built for esp32c3: {why}")):
        policy.decide(FirmwareFacts.read(path))
    with pytest.raises(ImageError, match=re.escape(why)):
        launch.prepare(path, launch.Choices(), [])
    with pytest.raises(ImageError, match=re.escape(why)):
        find_qemu("/bin/true", chips.ESP32C3)
    setup = MachineSetup(Path("/bin/true"), psram=False, watchdogs=False, chip=chips.ESP32C3)
    with pytest.raises(ImageError, match=re.escape(why)):
        Machine(setup, path, tmp_path).command(tmp_path)


def test_the_esp32_machine_comes_from_its_profile(tmp_path) -> None:
    """The QEMU command line: the machine, the watchdogs off and the download strap are
    the ESP32 profile's (what ESP-IDF's `idf.py qemu` passes)."""
    setup = MachineSetup(Path("/x/qemu-system-xtensa"), psram=False, watchdogs=False,
                         download=True)  # fmt: skip
    cmd = Machine(setup, tmp_path / "flash.bin", tmp_path).command(tmp_path)
    assert cmd[cmd.index("-machine") + 1] == "esp32"
    assert "driver=timer.esp32.timg,property=wdt_disable,value=true" in cmd
    assert "driver=esp32.gpio,property=strap_mode,value=0x0f" in cmd


def test_every_chip_id_and_offset_is_esptools() -> None:
    """The table agrees with esptool's own chip classes (chip id, bootloader offset)."""
    from esptool.targets import CHIP_DEFS

    for chip in chips.CHIPS:
        target = CHIP_DEFS[chip.name]
        assert chip.chip_id == target.IMAGE_CHIP_ID, chip.name
        assert chip.bootloader_offset == target.BOOTLOADER_FLASH_OFFSET, chip.name
