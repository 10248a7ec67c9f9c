"""A user's file coming in: read it, say what it is, or refuse it in one line.

Every file a user names (firmware, update, app, recipe input) is read here, once, and the
usual mistakes (missing, a folder, empty, unreadable, an unknown chip's firmware, an app
where a firmware is needed, a download cut short) become one `ImageError` line that names
the file and what to do. What the bytes are is `formats.classify`; this module only adds
the path and the refusal.
"""

from __future__ import annotations

from pathlib import Path

from .. import chips
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
    """A firmware file as it sits at its chip's bootloader offset (0x1000 on the ESP32; a
    whole flash image is accepted too), for any chip harness.chips knows. Whether that
    chip boots here is the run policy's to say (harness.emulator.policy)."""
    data = read_input(path)
    kind = formats.classify(data)
    if kind == "flash":
        data = data[formats.flash_bootloader(data) or 0 :].rstrip(b"\xff")
    elif kind == "app":
        raise ImageError(_app_instead_of_firmware(path, data))
    elif kind != "firmware":
        raise ImageError(
            f"{path} is not an ESP32 firmware image ({kind}): expected a .bin from "
            "micropython.org (bootloader + partition table + app)"
        )
    header = formats.ImageHeader.parse(data)
    if header is None or header.profile is None:
        chip_id = header.chip_id if header else "none"
        raise ImageError(f"{path} is built for a chip the harness does not know (chip id "
                         f"{chip_id}): give it {_wanted()}")  # fmt: skip
    at, expected = formats.firmware_offset(data), header.profile.bootloader_offset
    if at is not None and at != expected:
        raise ImageError(f"{path} is built for {header.chip} (its header says so), but laid out "
                         f"for a bootloader at {at:#x}, where {header.chip}'s ROM does not look "
                         f"({expected:#x}): a mislabelled or damaged file; give it "
                         f"{_wanted()}")  # fmt: skip
    return data


def _wanted() -> str:
    """What to give instead: `an esp32 image (ESP32_GENERIC of the same release)`."""
    return " or ".join(f"an {c.name} image ({c.board} of the same release)"
                       for c in chips.bootable())  # fmt: skip


def _app_instead_of_firmware(path: Path, data: bytes) -> str:
    start = formats.first_segment_addr(data)
    header = formats.ImageHeader.parse(data)
    chip = (header.profile if header else None) or chips.DEFAULT
    if chip.overlaps_bootloader(start, start + 1):  # a bootloader's first segment
        return (
            f"{path} is cut short: it starts with a bootloader but has no partition table at "
            f"0x8000 ({len(data)} bytes): download the firmware again"
        )
    return (
        f"{path} is an app image, without bootloader or partition table: give a full "
        "firmware .bin as the image, and this file as the app (--app) or OTA payload"
    )
