"""The ESP32 family's flash formats, read and written on the host, as typed values.

One module for every byte layout the harness reads or writes, following ESP-IDF
(esp_image_format.h, esp_flash_partitions.h, bootloader_utility.c) and MicroPython's
ports/esp32 (main.c for the filesystem region):

- the image header and its fields (`ImageHeader`), and what a file is (`classify`),
  with each chip's bootloader offset and memory from its profile (harness.chips);
- the partition table (`PartitionTable`);
- otadata: both records, which slot the bootloader picks (`boot_choice`, rollback
  included) and the records that select a slot (`otadata_selecting`), by one slot rule;
- app images as the bootloader checks them (`check_app`, parsed with esptool);
- the filesystem region MicroPython mounts (`fs_region`): the `vfs` (or `ffat`)
  partition, or from v1.26 on, the flash after the last partition.

Nothing here touches a device or a file: bytes in, dataclasses out.
"""

from __future__ import annotations

import binascii
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .. import chips
from ..chips import Chip
from ..errors import ImageError
from .size import FlashSize

if TYPE_CHECKING:
    from esptool.bin_image import BaseFirmwareImage

TABLE_OFFSET = 0x8000
SECTOR = 0x1000
APP_MAGIC = 0xE9
TABLE_MAGIC = b"\xaa\x50"
APP_DESC_MAGIC = 0xABCD5432
APP_TYPE, DATA_TYPE = 0, 1
SUBTYPE_FACTORY, SUBTYPE_OTA_DATA, SUBTYPE_FAT = 0x00, 0x00, 0x81
BLANK_SEQ = 0xFFFFFFFF
FS_LABELS = ("vfs", "ffat")  # MicroPython mounts the first it finds (flashbdev.py)

# How an update selects its slot: set_boot() (ESP-IDF validates the app first), a direct
# otadata write (the bootloader alone judges the slot), or not at all.
Select = Literal["set_boot", "otadata", "none"]
OtaState = Literal["NEW", "PENDING_VERIFY", "VALID", "INVALID", "ABORTED", "UNDEFINED"]
OTA_STATES: dict[int, OtaState] = {0: "NEW", 1: "PENDING_VERIFY", 2: "VALID", 3: "INVALID",
                                   4: "ABORTED", 0xFFFFFFFF: "UNDEFINED"}  # fmt: skip
OTA_STATE_CODES: dict[str, int] = {name: code for code, name in OTA_STATES.items()}
FileKind = Literal["flash", "firmware", "app", "blank", "unknown"]


# -- image header --------------------------------------------------------------------


@dataclass(frozen=True)
class ImageHeader:
    """The 24-byte header of a bootloader or app image (esp_image_header_t)."""

    segments: int
    flash_size_code: int
    chip_id: int

    @classmethod
    def parse(cls, data: bytes) -> ImageHeader | None:
        """None when `data` does not start with an image header."""
        if len(data) < 24 or data[0] != APP_MAGIC:
            return None
        return cls(data[1], data[3] >> 4, struct.unpack_from("<H", data, 12)[0])

    @property
    def chip(self) -> str:
        found = chips.by_id(self.chip_id)
        return found.name if found else "unknown"

    @property
    def profile(self) -> Chip | None:
        """The chip's profile (harness.chips); None: a chip id the harness does not know."""
        return chips.by_id(self.chip_id)

    @property
    def flash_size(self) -> FlashSize | None:
        """The flash size this image was built for, as the header claims it."""
        return FlashSize.from_code(self.flash_size_code)


def first_segment_addr(data: bytes) -> int:
    """Load address of an image's first segment (0 when there is none)."""
    return int.from_bytes(data[24:28], "little") if len(data) >= 28 else 0


def firmware_offset(data: bytes) -> int | None:
    """Where a firmware file (it starts at its bootloader) goes in flash: its chip's
    bootloader offset, or another one where that puts the partition table at 0x8000 (a
    file laid out for another chip than its header names). None: no table either way."""
    header = ImageHeader.parse(data)
    profile = header.profile if header else None
    first = (profile or chips.DEFAULT).bootloader_offset
    for offset in dict.fromkeys([first, *sorted(chips.bootloader_offsets())]):
        at = TABLE_OFFSET - offset
        if data[at : at + 2] == TABLE_MAGIC:
            return offset
    return None


def flash_bootloader(data: bytes) -> int | None:
    """Where the bootloader of a whole flash image (from 0) sits: the offset, other than
    0, of a chip's bootloader with the partition table at 0x8000. None: not such an image
    (a chip whose bootloader is at 0 has the same layout as its firmware file)."""
    if len(data) <= TABLE_OFFSET + 2 or data[0] == APP_MAGIC:
        return None
    if data[TABLE_OFFSET : TABLE_OFFSET + 2] != TABLE_MAGIC:
        return None
    return next((at for at in sorted(chips.bootloader_offsets())
                 if at and data[at] == APP_MAGIC), None)  # fmt: skip


def classify(data: bytes) -> FileKind:
    """'flash' (a whole flash image from 0, its bootloader at 0x1000 on the ESP32),
    'firmware' (bootloader, table and app from the bootloader's offset: 0x1000 on the
    ESP32, 0x0 on the C3, S3, C6...), 'app', 'blank' or 'unknown'."""
    if not data or data.count(0xFF) == len(data):
        return "blank"
    if flash_bootloader(data) is not None:
        return "flash"
    if data[0] != APP_MAGIC:
        return "unknown"
    return "firmware" if firmware_offset(data) is not None else "app"


def as_flash(data: bytes) -> bytes:
    """A firmware file as the flash sees it: shifted to its bootloader's offset."""
    kind = classify(data)
    offset = firmware_offset(data)
    if kind == "firmware" and offset is not None:
        return b"\xff" * offset + data
    if kind == "flash":
        return data
    raise ImageError(f"not a firmware or flash image (looks like: {kind})")


MICROPYTHON_BANNER = re.compile(
    rb"MicroPython (v\d+\.\d+(?:\.\d+)?(?:-[\w.]+)?) on \d{4}-\d\d-\d\d"
)


def micropython_version(data: bytes) -> str | None:
    """The release a MicroPython image was built from, from its own banner text."""
    found = MICROPYTHON_BANNER.search(data)
    return found.group(1).decode() if found else None


# -- partition table -----------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    name: str
    type: int
    subtype: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def is_app(self) -> bool:
        return self.type == APP_TYPE

    @property
    def is_ota_app(self) -> bool:
        return self.type == APP_TYPE and 0x10 <= self.subtype < 0x20


@dataclass(frozen=True)
class PartitionTable:
    partitions: tuple[Partition, ...]

    def __iter__(self) -> Iterator[Partition]:
        return iter(self.partitions)

    def __len__(self) -> int:
        return len(self.partitions)

    def get(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)

    def names(self) -> list[str]:
        return [p.name for p in self.partitions]

    @property
    def ota_slots(self) -> list[Partition]:
        """OTA app partitions in subtype order (ota_0, ota_1, ...), as the bootloader counts."""
        return sorted((p for p in self.partitions if p.is_ota_app), key=lambda p: p.subtype)

    @property
    def factory(self) -> Partition | None:
        return next((p for p in self.partitions if p.is_app and p.subtype == SUBTYPE_FACTORY), None)

    @property
    def otadata(self) -> Partition | None:
        return next(
            (p for p in self.partitions if p.type == DATA_TYPE and p.subtype == SUBTYPE_OTA_DATA),
            None,
        )

    @property
    def end(self) -> int:
        """Where the last partition ends."""
        return max((p.end for p in self.partitions), default=0)

    def fs_partition(self) -> Partition | None:
        """The filesystem partition the table itself names (releases up to v1.25)."""
        for label in FS_LABELS:
            part = self.get(label)
            if part is not None and part.type == DATA_TYPE:
                return part
        return None


def parse_table(flash: bytes, offset: int = TABLE_OFFSET) -> PartitionTable:
    parts = []
    for pos in range(offset, offset + 0xC00, 32):
        entry = flash[pos : pos + 32]
        if len(entry) < 32 or entry[:2] != TABLE_MAGIC:
            break
        ptype, subtype, poff, psize = struct.unpack_from("<BBII", entry, 2)
        name = entry[12:28].split(b"\0")[0].decode("ascii", "replace")
        parts.append(Partition(name, ptype, subtype, poff, psize))
    return PartitionTable(tuple(parts))


# -- the filesystem region -----------------------------------------------------------


@dataclass(frozen=True)
class FsRegion:
    """Where MicroPython's filesystem lives, and whether the table says so.

    Up to v1.25 the table has a `vfs` line. From v1.26 it has none, and MicroPython
    registers a `vfs` partition at boot from the end of the last partition to the end
    of the flash chip it detects (ports/esp32/main.c, boardctrl_startup).
    """

    label: str
    offset: int
    size: int
    in_table: bool


def fs_region(table: PartitionTable, flash_size: int) -> FsRegion | None:
    """The filesystem region by MicroPython's own rule; None when there is no room for one."""
    named = table.fs_partition()
    if named is not None:
        return FsRegion(named.name, named.offset, named.size, True)
    end = table.end
    if end == 0 or flash_size <= end:
        return None
    return FsRegion("vfs", end, flash_size - end, False)


def with_fs_region(table: PartitionTable, flash_size: int) -> PartitionTable:
    """The table with MicroPython's own filesystem region as a `vfs` line where the table
    has none (from v1.26), so that every flash offset MicroPython uses has a name."""
    region = fs_region(table, flash_size)
    if region is None or region.in_table:
        return table
    implicit = Partition(region.label, DATA_TYPE, SUBTYPE_FAT, region.offset, region.size)
    return PartitionTable((*table.partitions, implicit))


# -- otadata -------------------------------------------------------------------------


def ota_crc(seq: int) -> int:
    """ESP-IDF's otadata CRC: crc32_le(UINT32_MAX, &ota_seq, 4)."""
    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


@dataclass(frozen=True)
class OtaRecord:
    sector: int
    seq: int
    state: str  # an OtaState, or the raw value in hex when it is none of them
    crc_ok: bool
    valid: bool  # counts for the bootloader: seq set, CRC right, state not INVALID/ABORTED

    @classmethod
    def parse(cls, sector: int, raw: bytes) -> OtaRecord:
        seq = struct.unpack_from("<I", raw, 0)[0]
        state_raw, crc = struct.unpack_from("<II", raw, 24)
        crc_ok = crc == ota_crc(seq)
        state = OTA_STATES.get(state_raw, f"0x{state_raw:08x}")
        valid = seq != BLANK_SEQ and crc_ok and state not in ("INVALID", "ABORTED")
        return cls(sector, seq, state, crc_ok, valid)


def encode_ota_record(seq: int, state: str = "UNDEFINED") -> bytes:
    """One esp_ota_select_entry_t (32 bytes): seq, label (unused), state, crc."""
    if state not in OTA_STATE_CODES:
        raise ImageError(
            f"unknown otadata state {state!r}: use one of {', '.join(OTA_STATE_CODES)}"
        )
    return struct.pack("<I20sII", seq, b"\xff" * 20, OTA_STATE_CODES[state], ota_crc(seq))


def read_otadata(flash: bytes, table: PartitionTable) -> tuple[OtaRecord, ...] | None:
    """Both otadata records (sector 0, sector 1); None when the table has no otadata."""
    part = table.otadata
    if part is None:
        return None
    raws = [flash[part.offset + i * SECTOR : part.offset + i * SECTOR + 32] for i in (0, 1)]
    return tuple(OtaRecord.parse(i, raw) for i, raw in enumerate(raws) if len(raw) == 32)


def slot_for_seq(slots: list[Partition], seq: int) -> Partition:
    """ESP-IDF's rule: sequence number n selects OTA slot (n - 1) mod (number of slots)."""
    return slots[(seq - 1) % len(slots)]


@dataclass(frozen=True)
class BootChoice:
    """Which app the bootloader will load, and why (before it checks the image)."""

    slot: str | None
    reason: str


def boot_choice(table: PartitionTable, otadata: tuple[OtaRecord, ...] | None) -> BootChoice:
    """ESP-IDF's bootloader_utility_get_selected_boot_partition, rollback included."""
    slots = table.ota_slots
    factory = table.factory
    fallback = factory.name if factory else (slots[0].name if slots else None)
    if otadata is None or not slots:
        return BootChoice(fallback, "no OTA data or no OTA app partitions: factory app")
    if all(r.seq == BLANK_SEQ for r in otadata):
        return BootChoice(fallback, "otadata is blank (never set): factory or first app")
    valid = [r for r in otadata if r.valid]
    if not valid:
        return BootChoice(fallback, "ota data partition invalid: no valid record")
    active = max(valid, key=lambda r: r.seq)
    slot = slot_for_seq(slots, active.seq).name
    if active.state == "PENDING_VERIFY":
        others = [r for r in valid if r is not active]
        back = (
            slot_for_seq(slots, max(others, key=lambda r: r.seq).seq).name if others else fallback
        )
        return BootChoice(
            back,
            f"{slot} is still PENDING_VERIFY (never confirmed): the bootloader marks it "
            f"ABORTED and rolls back to {back}",
        )
    reason = f"otadata sector {active.sector} has the highest valid seq ({active.seq})"
    if active.state == "NEW":
        reason += "; state NEW: it boots as PENDING_VERIFY until the app confirms it"
    return BootChoice(slot, reason)


def otadata_selecting(
    table: PartitionTable, records: tuple[OtaRecord, ...], slot: str, state: str = "UNDEFINED"
) -> dict[int, bytes]:
    """The otadata sector esp_ota_set_boot_partition() writes to select `slot`.

    A record with the next sequence number that maps to `slot`, in the sector that does
    not hold the newest valid record. Returns {sector index: 4 KiB sector}.
    """
    slots = table.ota_slots
    names = [p.name for p in slots]
    if slot not in names:
        raise ImageError(f"no OTA slot {slot!r} in this image (it has {', '.join(names)})")
    valid = [r for r in records if r.valid]
    newest = max(valid, key=lambda r: r.seq) if valid else None
    seq = (newest.seq if newest else 0) + 1
    while slot_for_seq(slots, seq).name != slot:
        seq += 1
    sector = 1 - newest.sector if newest else 0
    return {sector: encode_ota_record(seq, state).ljust(SECTOR, b"\xff")}


def otadata_corrupt() -> dict[int, bytes]:
    """Both records overwritten with garbage (bad CRCs), as after a torn write."""
    return {0: (b"\x5a" * 32).ljust(SECTOR, b"\xff"), 1: (b"\xa5" * 32).ljust(SECTOR, b"\xff")}


def otadata_blank() -> dict[int, bytes]:
    """Both records erased, as on a fresh flash."""
    return {0: b"\xff" * SECTOR, 1: b"\xff" * SECTOR}


def next_update_slot(table: PartitionTable, running: str | None) -> Partition | None:
    """esp_ota_get_next_update_partition(NULL): the OTA slot after the running app
    (wrapping round), or the first one when a factory app runs."""
    slots = table.ota_slots
    names = [p.name for p in slots]
    if not slots:
        return None
    if running not in names:
        return slots[0]
    return slots[(names.index(running) + 1) % len(slots)]


@dataclass(frozen=True)
class FlashState:
    """otadata and the bootloader's choice in one flash image."""

    otadata: tuple[OtaRecord, ...] | None
    boot: BootChoice

    @classmethod
    def of(cls, flash: bytes) -> FlashState:
        table = parse_table(flash)
        records = read_otadata(flash, table)
        return cls(records, boot_choice(table, records))

    def states(self) -> list[str]:
        return [r.state for r in self.otadata or ()]


# -- app images ----------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    addr: int
    addr_hex: str
    length: int


@dataclass
class AppCheck:
    """What the bootloader would think of the app image at the start of `data`."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    chip: str | None = None
    segments: list[Segment] = field(default_factory=list)
    length: int | None = None
    checksum_ok: bool | None = None
    sha256_appended: bool | None = None
    sha256_ok: bool | None = None
    idf_version: str | None = None
    built: str | None = None
    flash_size: str | None = None


# esp_app_desc_t after the first segment header: time[16] at 80, date[16] at 96,
# idf_ver[32] at 112
_DESC_FIELDS = [(80, 96), (96, 112), (112, 144)]


@dataclass(frozen=True)
class AppDescription:
    """esp_app_desc_t, which ESP-IDF puts at the start of every app's first segment."""

    built: str | None
    idf_version: str | None


def app_description(app: bytes) -> AppDescription | None:
    desc = app[32:288]
    if len(desc) < 256 or struct.unpack_from("<I", desc, 0)[0] != APP_DESC_MAGIC:
        return None
    text = [desc[a:b].split(b"\0")[0].decode("ascii", "replace") for a, b in _DESC_FIELDS]
    return AppDescription(f"{text[1]} {text[0]}".strip() or None, text[2] or None)


def check_app(data: bytes, slot_size: int | None = None, chip: str | None = None) -> AppCheck:
    """Parse one app image with esptool and apply the bootloader's checks.

    `chip`: the chip the image must be for (the bootloader's own, for an app in a slot;
    default harness.chips.DEFAULT). Segments are judged by the bootloader-memory rule of
    the chip the image is built for, where its profile has one.
    """
    chip = chip or chips.DEFAULT.name
    header = ImageHeader.parse(data)
    if header is None:
        first = f"0x{data[0]:02x}" if data else "nothing"
        return AppCheck(False, [f"invalid magic byte {first} (expected 0xe9): no app image here"])
    size = header.flash_size
    check = AppCheck(False, chip=header.chip, flash_size=str(size) if size else None)
    try:
        image = _load_esptool_image(data, header.chip)
    except (struct.error, ValueError, IndexError) as exc:
        check.problems.append(f"image is cut short or malformed: {exc}")
        return check
    _check_segments(check, image, header.chip)
    if image.data_length is None:
        check.problems.append("image is cut short or malformed: esptool could not measure it")
        return check
    length = image.data_length + (32 if image.append_digest else 0)
    check.length = length
    _check_digests(check, image)
    if check.chip != chip:
        check.problems.append(f"built for {check.chip}, not {chip}")
    if slot_size is not None and length > slot_size:
        check.problems.append(f"image length {length} does not fit its slot of {slot_size} bytes")
    desc = app_description(data)
    if desc is not None:
        check.built, check.idf_version = desc.built, desc.idf_version
    check.ok = not check.problems
    return check


def _check_segments(check: AppCheck, image: BaseFirmwareImage, chip: str) -> None:
    """Each segment's load address; one in the bootloader's own memory is refused."""
    profile = chips.by_name(chip)
    for seg in image.segments:
        end = seg.addr + len(seg.data)
        check.segments.append(Segment(seg.addr, f"0x{seg.addr:08x}", len(seg.data)))
        if profile is not None and profile.overlaps_bootloader(seg.addr, end):
            check.problems.append(
                f"segment at 0x{seg.addr:08x}-0x{end:08x} loads into the bootloader's own "
                "memory: the bootloader refuses it (overlaps bootloader data)"
            )


def _check_digests(check: AppCheck, image: BaseFirmwareImage) -> None:
    """The checksum byte, and the appended SHA-256 where there is one."""
    check.checksum_ok = image.checksum == image.calculate_checksum()
    if not check.checksum_ok:
        check.problems.append("checksum mismatch (bootloader: Checksum failed)")
    check.sha256_appended = bool(image.append_digest)
    if image.append_digest:
        check.sha256_ok = image.stored_digest == image.calc_digest
        if not check.sha256_ok:
            check.problems.append("appended SHA-256 does not match (Image hash failed)")


def _load_esptool_image(data: bytes, chip: str) -> BaseFirmwareImage:
    """esptool is imported here, not at the top: booting never needs it (50 ms)."""
    from esptool.bin_image import LoadFirmwareImage
    from esptool.util import FatalError

    try:
        return LoadFirmwareImage(chip if chip != "unknown" else chips.DEFAULT.name, data)
    except FatalError as exc:
        raise ValueError(str(exc)) from None
