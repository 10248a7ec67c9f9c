"""Official MicroPython firmware files: what a file is, and what a release has.

`read_firmware()` checks a user's file is an ESP32 firmware image and says what is
wrong with it otherwise; `FirmwareFacts` are what the harness needs to know of a
release, read from the image itself (version, SPIRAM, OTA slots, a `vfs` line, app
rollback). Which files to run, and where to get them, is harness.manifest.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from . import formats
from .errors import ImageError
from .inspector import read_input

ROLLBACK_SINCE = (1, 21)  # CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE in sdkconfig.base, v1.21.0
PSRAM_MARKER = b"PSRAM enabled but initialization failed"  # only SPIRAM builds carry it


# -- one firmware file ---------------------------------------------------------------


def read_firmware(path: Path) -> bytes:
    """The firmware as it sits at 0x1000 (a whole flash image is accepted too)."""
    data = read_input(path)
    kind = formats.classify(data)
    header = formats.ImageHeader.parse(data)
    if kind == "firmware" and header is not None and header.chip != "esp32":
        raise ImageError(
            f"{path} is built for {header.chip}: QEMU's esp32 machine runs only ESP32 "
            "images: give it an esp32 image (an ESP32_GENERIC build of the same release)"
        )
    if kind == "flash":
        data = data[formats.BOOTLOADER_OFFSET :].rstrip(b"\xff")
    elif (
        kind == "app"
        and formats.BOOTLOADER_DRAM[0]
        <= formats.first_segment_addr(data)
        < (formats.BOOTLOADER_DRAM[1])
    ):
        raise ImageError(
            f"{path} is cut short: it starts with a bootloader but has no partition table at "
            f"0x8000 ({len(data)} bytes): download the firmware again"
        )
    elif kind == "app":
        raise ImageError(
            f"{path} is an app image, without bootloader or partition table: give a full "
            "firmware .bin as the image, and this file as the app (--app) or OTA payload"
        )
    elif kind != "firmware":
        raise ImageError(
            f"{path} is not an ESP32 firmware image ({kind}): expected a .bin from "
            "micropython.org (bootloader + partition table + app)"
        )
    header = formats.ImageHeader.parse(data)
    chip = header.chip if header else "unknown"
    if chip != "esp32":
        raise ImageError(f"{path} is built for {chip}; QEMU's esp32 machine needs an esp32 image")
    return data


@dataclass(frozen=True)
class FirmwareFacts:
    """What the harness needs to know of one release, read from the image itself."""

    version: str | None  # v1.25.0, from MicroPython's banner in the app
    header_flash_size: int
    table: formats.PartitionTable
    app_size: int  # bytes of the app image after the first app partition's offset
    file_size: int  # the whole firmware file: bootloader, table and app, from 0x1000
    spiram: bool
    idf_version: str | None  # v5.2.2, from the app's esp_app_desc_t

    @classmethod
    def of(cls, firmware: bytes) -> FirmwareFacts:
        flash = formats.as_flash(firmware)
        table = formats.parse_table(flash)
        header = formats.ImageHeader.parse(firmware)
        size_name = header.flash_size if header else None
        if size_name is None:
            raise ImageError("the bootloader header has an unknown flash size code")
        app = next((p for p in table if p.is_app), None)
        app_size = max(0, len(flash) - app.offset) if app else 0
        return cls(
            formats.micropython_version(firmware),
            int(size_name.removesuffix("MB")) << 20,
            table,
            app_size,
            len(firmware),
            PSRAM_MARKER in firmware,
            app_idf_version(flash, table),
        )

    @property
    def ota_slots(self) -> bool:
        return len(self.table.ota_slots) >= 2

    @property
    def fs_in_table(self) -> bool:
        """Releases up to v1.25 name the filesystem (`vfs`) in their partition table."""
        return self.table.fs_partition() is not None

    @property
    def runs_alone(self) -> bool:
        """Measured to stall when another emulation shares the host (see STALLS_BEFORE)."""
        return stalls_under_load(self.idf_version)

    @property
    def rollback(self) -> bool:
        """App rollback is built in (every MicroPython ESP32 build from v1.21.0)."""
        numbers = re.findall(r"\d+", self.version or "")
        return bool(numbers) and tuple(int(n) for n in numbers[:2]) >= ROLLBACK_SINCE


# Builds measured to stall under host load in Espressif's QEMU (both CPUs parked at
# fixed PCs after the bootloader's `entry`, with the watchdogs on or off): ESP-IDF
# v4.2.4 (MicroPython v1.20.0) and v5.0.2 (v1.21.0 SPIRAM). Measured not to: v5.0.4,
# v5.2.2, v5.5.1 (bench/watchdog.py, README). Such a guest gets the host to itself.
STALLS_BEFORE = (5, 0, 4)


def stalls_under_load(idf_version: str | None) -> bool:
    numbers = tuple(int(n) for n in re.findall(r"\d+", idf_version or "")[:3])
    return bool(numbers) and numbers < STALLS_BEFORE


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
