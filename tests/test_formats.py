"""The ESP32 formats on synthetic bytes: no firmware file, no QEMU.

Partition tables, otadata records and app headers are built here byte by byte, as
ESP-IDF lays them out, so each rule of harness.flash.formats is checked on its own.
"""

from __future__ import annotations

import struct

import pytest

from harness.errors import ImageError
from harness.flash import formats

MB = 1 << 20


def entry(name: str, ptype: int, subtype: int, offset: int, size: int) -> bytes:
    """One esp_partition_info_t: magic, type, subtype, offset, size, label[16], flags."""
    return b"\xaa\x50" + struct.pack("<BBII16sI", ptype, subtype, offset, size, name.encode(), 0)


def flash_with(entries: list[bytes], size: int = 4 * MB) -> bytearray:
    flash = bytearray(b"\xff" * size)
    table = b"".join(entries)
    flash[formats.TABLE_OFFSET : formats.TABLE_OFFSET + len(table)] = table
    return flash


OTA_TABLE = [  # MicroPython's partitions-4MiB-ota.csv: v1.26 on, no vfs line
    entry("nvs", 1, 0x02, 0x9000, 0x4000),
    entry("otadata", 1, 0x00, 0xD000, 0x2000),
    entry("phy_init", 1, 0x01, 0xF000, 0x1000),
    entry("ota_0", 0, 0x10, 0x10000, 0x180000),
    entry("ota_1", 0, 0x11, 0x190000, 0x180000),
]
VFS_LINE = entry("vfs", 1, 0x81, 0x310000, 0xF0000)


def with_otadata(flash: bytearray, *records: tuple[int, int, str]) -> bytes:
    """records: (sector, seq, state)."""
    for sector, seq, state in records:
        at = 0xD000 + sector * formats.SECTOR
        flash[at : at + 32] = formats.encode_ota_record(seq, state)
    return bytes(flash)


def choice(flash: bytes) -> formats.BootChoice:
    table = formats.parse_table(flash)
    return formats.boot_choice(table, formats.read_otadata(flash, table))


# -- partition table and the filesystem region ---------------------------------------


def test_table_without_vfs_gets_the_region_after_the_last_partition() -> None:
    """What v1.26+ does at boot: vfs from the end of ota_1 to the end of the flash."""
    table = formats.parse_table(bytes(flash_with(OTA_TABLE)))
    assert table.names() == ["nvs", "otadata", "phy_init", "ota_0", "ota_1"]
    assert table.fs_partition() is None
    assert formats.fs_region(table, 4 * MB) == formats.FsRegion("vfs", 0x310000, 0xF0000, False)
    region = formats.fs_region(table, 16 * MB)
    assert (
        region is not None and region.offset == 0x310000 and region.offset + region.size == 16 * MB
    )


def test_table_with_vfs_line_keeps_it_whatever_the_flash_size() -> None:
    table = formats.parse_table(bytes(flash_with([*OTA_TABLE, VFS_LINE])))
    assert formats.fs_region(table, 16 * MB) == formats.FsRegion("vfs", 0x310000, 0xF0000, True)


def test_no_room_after_the_last_partition_means_no_filesystem() -> None:
    full = [*OTA_TABLE, entry("data", 1, 0x99, 0x310000, 0xF0000)]
    assert formats.fs_region(formats.parse_table(bytes(flash_with(full))), 4 * MB) is None
    assert formats.fs_region(formats.parse_table(b"\xff" * 0x9000), 4 * MB) is None


def test_ota_slots_are_in_subtype_order() -> None:
    table = formats.parse_table(bytes(flash_with([OTA_TABLE[4], *OTA_TABLE[:4]])))
    assert [p.name for p in table.ota_slots] == ["ota_0", "ota_1"]
    assert table.otadata is not None and table.otadata.offset == 0xD000
    assert table.factory is None


# -- otadata and the bootloader's choice ---------------------------------------------


def test_blank_otadata_boots_the_first_slot() -> None:
    got = choice(bytes(flash_with(OTA_TABLE)))
    assert got.slot == "ota_0" and "blank" in got.reason


def test_highest_valid_seq_wins_and_seq_maps_to_slot() -> None:
    flash = with_otadata(flash_with(OTA_TABLE), (0, 1, "VALID"), (1, 2, "VALID"))
    assert choice(flash).slot == "ota_1"
    flash = with_otadata(flash_with(OTA_TABLE), (0, 3, "VALID"), (1, 2, "VALID"))
    assert choice(flash).slot == "ota_0"  # seq 3 -> (3 - 1) % 2 = slot 0


def test_pending_verify_rolls_back_to_the_previous_valid_record() -> None:
    flash = with_otadata(flash_with(OTA_TABLE), (0, 1, "VALID"), (1, 2, "PENDING_VERIFY"))
    got = choice(flash)
    assert got.slot == "ota_0"
    assert "PENDING_VERIFY" in got.reason and "rolls back to ota_0" in got.reason


def test_aborted_and_bad_crc_records_do_not_count() -> None:
    flash = with_otadata(flash_with(OTA_TABLE), (0, 1, "VALID"), (1, 2, "ABORTED"))
    assert choice(flash).slot == "ota_0"
    broken = bytearray(with_otadata(flash_with(OTA_TABLE), (0, 1, "VALID"), (1, 2, "VALID")))
    broken[0xE000 + 28] ^= 0xFF  # sector 1's crc
    records = formats.read_otadata(bytes(broken), formats.parse_table(bytes(broken)))
    assert records is not None and [r.crc_ok for r in records] == [True, False]
    assert choice(bytes(broken)).slot == "ota_0"


def test_corrupt_otadata_has_no_valid_record() -> None:
    flash = flash_with(OTA_TABLE)
    for sector, data in formats.otadata_corrupt().items():
        flash[0xD000 + sector * formats.SECTOR : 0xD000 + (sector + 1) * formats.SECTOR] = data
    got = choice(bytes(flash))
    assert got.slot == "ota_0" and "invalid" in got.reason


def test_the_writer_selects_by_the_same_rule_the_reader_uses() -> None:
    flash = bytearray(with_otadata(flash_with(OTA_TABLE), (0, 1, "VALID")))
    table = formats.parse_table(bytes(flash))
    records = formats.read_otadata(bytes(flash), table)
    assert records is not None
    sectors = formats.otadata_selecting(table, records, "ota_1", "NEW")
    assert list(sectors) == [1]  # the sector not holding the newest record
    flash[0xE000 : 0xE000 + formats.SECTOR] = sectors[1]
    state = formats.FlashState.of(bytes(flash))
    assert state.states() == ["VALID", "NEW"] and state.boot.slot == "ota_1"
    with pytest.raises(ImageError, match="no OTA slot 'ota_7'"):
        formats.otadata_selecting(table, records, "ota_7")


# -- app images ----------------------------------------------------------------------


def app_header(chip_id: int, flash_code: int = 2) -> bytes:
    """An esp_image_header_t (24 bytes) and one empty segment."""
    head = struct.pack("<BBBBI4sH", 0xE9, 1, 2, flash_code << 4, 0x40080000, b"\xee" * 4, chip_id)
    head = head.ljust(24, b"\0")  # chip id at 12, as esp_image_header_t has it
    return head + struct.pack("<II", 0x3F400020, 0)


def test_header_fields_are_read_in_one_place() -> None:
    header = formats.ImageHeader.parse(app_header(9, flash_code=4))
    assert header is not None
    assert (header.chip, str(header.flash_size), header.segments) == ("esp32s3", "16MB", 1)
    assert formats.ImageHeader.parse(b"\x00" * 24) is None


def test_an_app_for_another_chip_is_reported() -> None:
    check = formats.check_app(app_header(9) + b"\0" * 64)
    assert not check.ok and check.chip == "esp32s3"
    assert any("built for esp32s3" in p or "malformed" in p for p in check.problems)


def test_a_file_that_is_not_an_image_says_so() -> None:
    check = formats.check_app(b"hello")
    assert not check.ok and "invalid magic byte 0x68" in check.problems[0]
    assert formats.classify(b"hello") == "unknown"
    assert formats.classify(b"\xff" * 100) == "blank"


def test_micropython_version_comes_from_the_banner() -> None:
    assert formats.micropython_version(b"..MicroPython v1.27.0 on 2025-12-09; ..") == "v1.27.0"
    assert formats.micropython_version(b"no banner") is None
