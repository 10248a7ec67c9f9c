"""Flash images from real firmware: sizes, layouts, the cache, untouched inputs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from harness.errors import ImageError
from harness.flash import formats, images
from harness.flash.firmware import PSRAM_MARKER
from harness.flash.size import EMULATED_MB, MB, FlashSize


@pytest.mark.parametrize("text", ["2MB", "4MB", "8MB", "16MB", "16M", "4"])
def test_flash_sizes_qemu_can_emulate(text: str) -> None:
    assert FlashSize.emulated(text).mb in EMULATED_MB


@pytest.mark.parametrize("text", ["3MB", "32MB", "1MB", "0", "big", ""])
def test_other_flash_sizes_are_refused_with_the_sizes_that_work(text: str) -> None:
    with pytest.raises(ImageError, match="2MB, 4MB, 8MB or 16MB"):
        FlashSize.emulated(text)


def test_4mb_image_keeps_the_firmware_byte_for_byte(fw, build_image) -> None:
    src = fw("OTA-20250415-v1.25.0")
    flash = build_image(src, "4MB", format_vfs=False).read_bytes()
    firmware = src.read_bytes()
    assert len(flash) == 4 * MB
    assert flash[:0x1000] == b"\xff" * 0x1000
    assert flash[0x1000 : 0x1000 + len(firmware)] == firmware
    assert set(flash[0x1000 + len(firmware) :]) == {0xFF}


def test_16mb_image_is_what_the_reporters_command_makes(fw, build_image, tmp_path) -> None:
    """`mp-image-tool-esp32 firmware.bin -f 16M --resize vfs=0`, padded to 16 MiB."""
    src = fw("OTA-20250415-v1.25.0")
    flash = build_image(src, "16MB", format_vfs=False).read_bytes()
    assert len(flash) == 16 * MB
    converted = images.convert(src.read_bytes(), ["-f", "16M", "--resize", "vfs=0"])
    assert flash[0x1000 : 0x1000 + len(converted)] == converted
    table = {p.name: p for p in formats.parse_table(flash)}
    assert table["vfs"].offset + table["vfs"].size == 16 * MB
    assert flash[0x1003] >> 4 == 4  # bootloader header now says 16MB


def test_ota_layout_converts_a_plain_firmware(fw, build_image) -> None:
    flash = build_image(fw("20240602-v1.23.0"), "16MB", layout="ota").read_bytes()
    names = [p.name for p in formats.parse_table(flash)]
    assert {"otadata", "ota_0", "ota_1", "vfs"} <= set(names)
    assert formats.boot_choice(formats.parse_table(flash), None).slot == "ota_0"


def test_vfs_files_are_baked_into_littlefs(fw, build_image, tmp_path) -> None:
    from littlefs import LittleFS

    lib = tmp_path / "lib"
    (lib / "ota").mkdir(parents=True)
    (lib / "ota" / "update.py").write_text("X = 1\n")
    blob = tmp_path / "fw.bin"
    blob.write_bytes(os.urandom(5000))
    flash = build_image(
        fw("OTA-20250415-v1.25.0"), "4MB", vfs_files=((lib, "/lib"), (blob, "/fw.bin"))
    ).read_bytes()
    vfs = next(p for p in formats.parse_table(flash) if p.name == "vfs")
    fs = LittleFS(block_size=4096, block_count=vfs.size // 4096, mount=False, **images.LFS_OPTIONS)
    fs.context.buffer[:] = flash[vfs.offset : vfs.offset + vfs.size]
    fs.mount()
    assert fs.open("/fw.bin", "rb").read() == blob.read_bytes()
    assert fs.open("/lib/ota/update.py", "r").read() == "X = 1\n"
    assert "boot.py" in fs.listdir("/")


def test_cache_hits_on_same_content_and_misses_on_changed_content(fw, tmp_path) -> None:
    src = fw("OTA-20250415-v1.25.0")
    copy = tmp_path / "copy.bin"
    copy.write_bytes(src.read_bytes())
    cache = tmp_path / "cache"
    first = images.build(images.Recipe(copy, FlashSize.emulated("4MB")), cache)
    mtime = first.stat().st_mtime_ns
    again = images.build(images.Recipe(copy, FlashSize.emulated("4MB")), cache)
    assert again == first and again.stat().st_mtime_ns == mtime
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(data)
    changed = images.build(images.Recipe(copy, FlashSize.emulated("4MB")), cache)
    assert changed != first


def test_inputs_are_never_modified(fw, tmp_path) -> None:
    src = fw("OTA-20250415-v1.25.0")
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    images.build(images.Recipe(src, FlashSize(16), layout="ota"), tmp_path)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


def test_app_image_written_into_the_first_slot(fw, build_image, firmware_dir) -> None:
    app = firmware_dir / "ESP32_GENERIC-OTA-20231227-v1.22.0.app-bin"
    flash = build_image(fw("OTA-20250415-v1.25.0"), "4MB", app=app).read_bytes()
    ota0 = next(p for p in formats.parse_table(flash) if p.name == "ota_0")
    assert flash[ota0.offset : ota0.offset + app.stat().st_size] == app.read_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"hello, I am text\n", "not an ESP32 firmware image"),
    ],
)
def test_bad_firmware_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        images.build(images.Recipe(path, FlashSize(4)), tmp_path / "cache")


def test_app_image_given_as_firmware_says_what_to_do(firmware_dir, tmp_path) -> None:
    app = firmware_dir / "ESP32_GENERIC-OTA-20231227-v1.22.0.app-bin"
    with pytest.raises(ImageError, match="is an app image"):
        images.build(images.Recipe(app, FlashSize(4)), tmp_path)


def test_wrong_chip_is_refused(fw, tmp_path) -> None:
    data = bytearray(fw("OTA-20250415-v1.25.0").read_bytes())
    data[12] = 9  # chip id of the ESP32-S3
    path = tmp_path / "s3.bin"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="built for esp32s3"):
        images.build(images.Recipe(path, FlashSize(4)), tmp_path / "cache")


def test_firmware_that_does_not_fit_the_flash(fw, tmp_path) -> None:
    with pytest.raises(ImageError, match="2MB"):
        images.build(images.Recipe(fw("OTA-20250415-v1.25.0"), FlashSize(2)), tmp_path)


def test_psram_is_detected_only_in_spiram_builds(firmware_dir) -> None:
    for path in firmware_dir.glob("*.bin"):
        assert (PSRAM_MARKER in path.read_bytes()) == ("SPIRAM" in path.name), path.name
