"""A user's file coming in: read it, say what it is, or refuse it in one line.

Every file a user names (firmware, update, app, recipe input) is read here, once, and the
usual mistakes (missing, a folder, empty, unreadable, another chip's firmware, an app
where a firmware is needed, a download cut short) become one `ImageError` line that names
the file and what to do. What the bytes are is `formats.classify`; this module only adds
the path and the refusal.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ImageError
from . import formats


def read_input(path: Path) -> bytes:
    """The bytes of a user-given file, turning the usual mistakes into one-line errors."""
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, expected an image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None
    if not data:
        raise ImageError(f"{path}: file is empty")
    return data


def read_firmware(path: Path) -> bytes:
    """An ESP32 firmware file as it sits at 0x1000 (a whole flash image is accepted too)."""
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
    elif kind == "app":
        raise ImageError(_app_instead_of_firmware(path, data))
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


def _app_instead_of_firmware(path: Path, data: bytes) -> str:
    start = formats.first_segment_addr(data)
    if formats.BOOTLOADER_DRAM[0] <= start < formats.BOOTLOADER_DRAM[1]:  # a bootloader's
        return (
            f"{path} is cut short: it starts with a bootloader but has no partition table at "
            f"0x8000 ({len(data)} bytes): download the firmware again"
        )
    return (
        f"{path} is an app image, without bootloader or partition table: give a full "
        "firmware .bin as the image, and this file as the app (--app) or OTA payload"
    )
