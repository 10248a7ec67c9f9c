"""The one flash-size type: parsed once where a size comes in, used as a value everywhere.

A size arrives as a user's text (`16MB`, `16M`, `16`), a file's length, or the 4-bit code
in an image header; inside the harness it is a `FlashSize`. QEMU's esp32 machine picks its
flash chip by the file's size and emulates 2, 4, 8 and 16 MB only (w25x16, gd25q32,
gd25q64, is25lp128), so sizes meant for the emulator are checked with `emulated()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from ..errors import ImageError

MB = 1 << 20
EMULATED_MB = (2, 4, 8, 16)
# esp_image_header_t's flash size nibble (esptool's FLASH_SIZES for the ESP32 family)
HEADER_CODES = {1: 0, 2: 1, 4: 2, 8: 3, 16: 4, 32: 5, 64: 6, 128: 7}


@dataclass(frozen=True, order=True)
class FlashSize:
    """A flash chip's size in MiB (1, 2, 4, ... 128)."""

    mb: int

    def __post_init__(self) -> None:
        if self.mb not in HEADER_CODES:
            raise ImageError(f"{self.mb}MB is not a flash size (1MB to 128MB, a power of two)")

    @classmethod
    def parse(cls, value: str | int | FlashSize) -> FlashSize:
        """'16MB', '16M', '16MiB', '16' or a byte count; anything else is one-line error."""
        if isinstance(value, FlashSize):
            return value
        if isinstance(value, int):
            if value % MB or value // MB not in HEADER_CODES:
                raise ImageError(f"{value} bytes is not a flash size")
            return cls(value // MB)
        key = value.strip().upper().removesuffix("B").removesuffix("I").removesuffix("M")
        if not key.isdigit() or int(key) not in HEADER_CODES:
            raise ImageError(f"flash size {value} is not a size like 4MB or 16MB")
        return cls(int(key))

    @classmethod
    def emulated(cls, value: str | int | FlashSize) -> FlashSize:
        """A size QEMU's esp32 machine can emulate; any other is refused up front."""
        try:
            size = cls.parse(value)
        except ImageError:
            size = None
        if size is None or size.mb not in EMULATED_MB:
            raise ImageError(
                f"flash size {value} cannot be emulated: QEMU's esp32 machine takes only "
                "2MB, 4MB, 8MB or 16MB flash images"
            )
        return size

    @classmethod
    def from_code(cls, code: int) -> FlashSize | None:
        """The size an image header's 4-bit code claims (None: a code with no size)."""
        return next((cls(mb) for mb, c in HEADER_CODES.items() if c == code), None)

    @property
    def bytes(self) -> int:
        return self.mb * MB

    @property
    def code(self) -> int:
        """The image header's 4-bit code for this size."""
        return HEADER_CODES[self.mb]

    @property
    def tool_arg(self) -> str:
        """How mp-image-tool-esp32's `-f` and esptool spell it: 16M."""
        return f"{self.mb}M"

    def __str__(self) -> str:
        return f"{self.mb}MB"


def emulated_size(value: Any) -> FlashSize:
    """For files the user writes: the refusal as the ValueError pydantic locates."""
    try:
        return FlashSize.emulated(value)
    except ImageError as exc:
        raise ValueError(str(exc)) from None


# A size in a YAML file (scenario matrix, image recipe): `16MB` in, a FlashSize out.
EmulatedSize = Annotated[
    FlashSize,
    BeforeValidator(emulated_size),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "enum": [f"{mb}MB" for mb in EMULATED_MB]}),
]
