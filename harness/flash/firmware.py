"""What a MicroPython release has, read from its firmware file once: `FirmwareFacts`.

Version, ESP-IDF version, SPIRAM, OTA slots, a `vfs` line, app rollback: read from the
image itself (its banner text, esp_app_desc_t, its partition table), never from its
file name. Reading and refusing the file is harness.flash.inputs; which files to run,
and where to get them, is harness.sources.manifest.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .. import chips
from ..chips import Chip
from ..errors import ImageError
from . import formats
from .inputs import read_firmware, read_input
from .size import FlashSize

ROLLBACK_SINCE = (1, 21)  # CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE in sdkconfig.base, v1.21.0
PSRAM_MARKER = b"PSRAM enabled but initialization failed"  # only SPIRAM builds carry it


@dataclass(frozen=True)
class FirmwareFacts:
    """What the harness needs to know of one release, read from the image itself."""

    version: str | None  # v1.25.0, from MicroPython's banner in the app
    header_flash_size: FlashSize  # what its bootloader header claims
    table: formats.PartitionTable
    app_size: int  # bytes of the app image after the first app partition's offset
    file_size: int  # the whole firmware file: bootloader, table and app
    spiram: bool
    idf_version: str | None  # v5.2.2, from the app's esp_app_desc_t
    chip: Chip  # what its bootloader's header names (harness.chips)
    name: str = "this firmware"  # the file's name, for messages

    @classmethod
    def of(cls, firmware: bytes, name: str = "this firmware") -> FirmwareFacts:
        """The facts of a firmware file's bytes (as it sits at its bootloader's offset)."""
        flash = formats.as_flash(firmware)
        table = formats.parse_table(flash)
        header = formats.ImageHeader.parse(firmware)
        size = FlashSize.from_code(header.flash_size_code) if header else None
        if size is None:
            raise ImageError("the bootloader header has an unknown flash size code")
        app = next((p for p in table if p.is_app), None)
        app_size = max(0, len(flash) - app.offset) if app else 0
        return cls(
            formats.micropython_version(firmware),
            size,
            table,
            app_size,
            len(firmware),
            PSRAM_MARKER in firmware,
            app_idf_version(flash, table),
            (header.profile if header else None) or chips.DEFAULT,
            name,
        )

    @classmethod
    def read(cls, path: Path) -> FirmwareFacts:
        """The facts of a user's firmware file, read and checked once per file and content."""
        stat = path.stat() if path.is_file() else None
        return _facts(path, stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)

    @property
    def ota_slots(self) -> bool:
        return len(self.table.ota_slots) >= 2

    @property
    def fs_in_table(self) -> bool:
        """Releases up to v1.25 name the filesystem (`vfs`) in their partition table."""
        return self.table.fs_partition() is not None

    @property
    def rollback(self) -> bool:
        """App rollback is built in (every MicroPython ESP32 build from v1.21.0)."""
        numbers = re.findall(r"\d+", self.version or "")
        return bool(numbers) and tuple(int(n) for n in numbers[:2]) >= ROLLBACK_SINCE


@functools.lru_cache(maxsize=64)
def _facts(path: Path, mtime_ns: int, size: int) -> FirmwareFacts:
    """One parse per file version (a collection plans many cells of the same firmware)."""
    return FirmwareFacts.of(read_firmware(path), str(path))


@dataclass(frozen=True)
class ReleaseFacts:
    """What a release file says of itself, a firmware .bin or an app image alike (an
    update's): its MicroPython and ESP-IDF versions."""

    version: str | None
    idf_version: str | None

    @classmethod
    def read(cls, path: Path) -> ReleaseFacts:
        stat = path.stat() if path.is_file() else None
        return _release(path, stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)

    @property
    def numbers(self) -> tuple[int, ...] | None:
        """(1, 25, 0) for v1.25.0, to order releases; None: no version in the file."""
        found = re.findall(r"\d+", self.version or "")[:3]
        return tuple(int(n) for n in found) if found else None


@functools.lru_cache(maxsize=64)
def _release(path: Path, mtime_ns: int, size: int) -> ReleaseFacts:
    data = read_input(path)
    if formats.classify(data) == "app":
        desc = formats.app_description(data[:512])
        return ReleaseFacts(formats.micropython_version(data), desc.idf_version if desc else None)
    facts = FirmwareFacts.read(path)
    return ReleaseFacts(facts.version, facts.idf_version)


def app_idf_version(flash: bytes, table: formats.PartitionTable) -> str | None:
    """The ESP-IDF version of the first app in a flash image (what boots on a fresh one)."""
    app = next((p for p in table if p.is_app), None)
    if app is None:
        return None
    desc = formats.app_description(flash[app.offset : app.offset + 512])
    return desc.idf_version if desc else None


def firmware_id(path: Path) -> str:
    """The version in a firmware file name (v1.25.0), for test ids."""
    found = re.search(r"v\d+\.\d+(?:\.\d+)?(?:-[\w.]+?)?(?=\.app-bin$|\.bin$|$)", path.name)
    return found.group(0) if found else path.stem


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
