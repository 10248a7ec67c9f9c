"""Flash images: official firmware in, an exact 2/4/8/16 MiB flash file out.

A `Recipe` says how: which firmware, what flash size, and the conversion users make
with mp-image-tool-esp32 (`-f 16M`, `--table ota`, `--resize vfs=0`), optionally an
app image for the first app slot and files for the littlefs vfs. The conversion runs
the real mp-image-tool-esp32 on a private copy, so the result is byte for byte what
the user's own command makes. QEMU picks its flash chip by file size, so images are
padded with 0xFF to exactly the flash size; other sizes are refused up front.

Built images are cached under their recipe's content hash (inputs hashed, not
named), written atomically so parallel runs can share the cache. Input files are
only ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from . import inspect
from .errors import ImageError

MB = 1 << 20
FLASH_SIZES = {"2MB": 2 * MB, "4MB": 4 * MB, "8MB": 8 * MB, "16MB": 16 * MB}
LAYOUTS = ("keep", "ota")
VFS_BLOCK = 4096
# MicroPython mounts the vfs with VfsLfs2(readsize=32, progsize=32, lookahead=32);
# littlefs on-disk version 2.0 is readable by every MicroPython release we support.
LFS_OPTIONS = {"read_size": 32, "prog_size": 32, "lookahead_size": 32, "disk_version": 0x00020000}
PSRAM_MARKER = b"PSRAM enabled but initialization failed"  # only SPIRAM builds carry it


def parse_flash_size(text: str | int) -> int:
    """'16MB', '16M', '16' or a byte count -> bytes; anything QEMU cannot emulate is refused."""
    if isinstance(text, int):
        size = text
    else:
        key = text.strip().upper().removesuffix("B").removesuffix("M").removesuffix("IB")
        size = int(key) * MB if key.isdigit() else -1
    if size not in FLASH_SIZES.values():
        raise ImageError(
            f"flash size {text} cannot be emulated: QEMU's esp32 machine takes only "
            "2MB, 4MB, 8MB or 16MB flash images"
        )
    return size


def size_name(size: int) -> str:
    return next(name for name, value in FLASH_SIZES.items() if value == size)


@dataclass(frozen=True)
class Recipe:
    """How to make one flash image. `flash_size` None keeps the firmware's own size."""

    firmware: Path
    flash_size: int | None = None
    layout: str = "keep"
    resize: str | None = None  # mp-image-tool-esp32 --resize; default vfs=0 when growing
    app: Path | None = None  # written into the first app slot (ota_0 or factory)
    vfs_files: tuple[tuple[Path, str], ...] = field(default_factory=tuple)
    format_vfs: bool = True  # littlefs made as MicroPython's first boot would (saves ~0.5 s/boot)
    header_size: int | None = None  # claim another size in the header than the chip has
    # written at a partition's offset last, as `esptool write_flash` would: may run past
    # the partition's end (an app larger than its slot), never past the flash's
    writes: tuple[tuple[str, Path], ...] = field(default_factory=tuple)

    def tool_args(self, header_size: int) -> list[str]:
        """mp-image-tool-esp32 options for this recipe (empty: no conversion)."""
        args: list[str] = []
        size = self.header_size or self.flash_size or header_size
        if size != header_size:
            args += ["-f", f"{size // MB}M"]
        if self.layout == "ota":
            args += ["--table", "ota"]
        grow = args and not self.header_size  # a deliberate mismatch keeps the table
        resize = self.resize or ("vfs=0" if grow else None)
        if resize:
            args += ["--resize", resize]
        return args


def needs_psram(flash_or_firmware: bytes) -> bool:
    """A SPIRAM build bails out at boot without PSRAM; give the machine 4 MB when so."""
    return PSRAM_MARKER in flash_or_firmware


def header_flash_size(firmware: bytes) -> int:
    """The flash size written in the bootloader's image header."""
    code = firmware[3] >> 4
    name = inspect.FLASH_SIZES.get(code)
    if name is None:
        raise ImageError(f"bootloader header has an unknown flash size code {code}")
    return parse_flash_size(name)


def _firmware_bytes(path: Path) -> bytes:
    """The firmware as it sits at 0x1000 (a whole flash image is accepted too)."""
    data = inspect.read_input(path)
    kind = inspect.classify(data)
    if kind == "flash":
        return data[inspect.BOOTLOADER_OFFSET :].rstrip(b"\xff")
    if kind == "firmware":
        return data
    first_segment = int.from_bytes(data[24:28], "little") if len(data) >= 28 else 0
    if kind == "app" and inspect.BOOTLOADER_DRAM[0] <= first_segment < inspect.BOOTLOADER_DRAM[1]:
        raise ImageError(
            f"{path} is cut short: it starts with a bootloader but has no partition table at "
            f"0x8000 ({len(data)} bytes): download the firmware again"
        )
    if kind == "app":
        raise ImageError(
            f"{path} is an app image, without bootloader or partition table: give a full "
            "firmware .bin as the image, and this file as the app (--app) or OTA payload"
        )
    raise ImageError(
        f"{path} is not an ESP32 firmware image ({kind}): expected a .bin from "
        "micropython.org (bootloader + partition table + app)"
    )


def _check_chip(path: Path, data: bytes) -> None:
    chip = inspect.CHIP_IDS.get(int.from_bytes(data[12:14], "little"), "unknown")
    if chip != "esp32":
        raise ImageError(f"{path} is built for {chip}; QEMU's esp32 machine needs an esp32 image")


def _digest(recipe: Recipe) -> str:
    h = hashlib.sha256()
    for path in [recipe.firmware, *(p for p in [recipe.app] if p), *(w for _, w in recipe.writes)]:
        h.update(hashlib.sha256(inspect.read_input(path)).digest())
    for src, _ in recipe.vfs_files:  # vfs files may be empty (an __init__.py)
        for name, member in _members(src):
            h.update(name.encode() + hashlib.sha256(member.read_bytes()).digest())
    params = {
        "size": recipe.flash_size, "layout": recipe.layout, "resize": recipe.resize,
        "vfs": [dst for _, dst in recipe.vfs_files], "header": recipe.header_size,
        "writes": [name for name, _ in recipe.writes],
        "format_vfs": recipe.format_vfs,
        "tool": version("mp-image-tool-esp32"), "lfs": LFS_OPTIONS, "v": 2,
    }  # fmt: skip
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _members(path: Path) -> list[tuple[str, Path]]:
    """A file, or every file under a folder, with names relative to it."""
    if not path.exists():
        raise ImageError(f"{path}: no such file or folder to put into the vfs")
    if path.is_dir():
        return [(p.relative_to(path).as_posix(), p) for p in sorted(path.rglob("*")) if p.is_file()]
    return [("", path)]


def user_cache(variable: str, name: str) -> Path:
    """$variable, else ~/.cache/esp32-ota-harness/<name> (XDG_CACHE_HOME honoured)."""
    if os.environ.get(variable):
        return Path(os.environ[variable])
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "esp32-ota-harness" / name


def cache_dir() -> Path:
    """HARNESS_CACHE, else the user's cache folder."""
    return user_cache("HARNESS_CACHE", "images")


def _publish(tmp: str, data: bytes, out: Path) -> None:
    """Write `data` to `out` atomically: a parallel reader sees all of it or nothing."""
    staged = Path(tmp) / "staged.bin"
    staged.write_bytes(data)
    os.replace(staged, out)


def build(recipe: Recipe, cache: Path | None = None) -> Path:
    """Return the path of the flash image for `recipe`, building it if not cached."""
    if recipe.layout not in LAYOUTS:
        raise ImageError(f"unknown layout {recipe.layout!r}: use one of {', '.join(LAYOUTS)}")
    firmware = _firmware_bytes(recipe.firmware)
    _check_chip(recipe.firmware, firmware)
    cache = cache or cache_dir()
    out = cache / f"{_digest(recipe)}.bin"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        _publish(tmp, _make_flash(recipe, firmware, Path(tmp)), out)
    return out


def _make_flash(recipe: Recipe, firmware: bytes, tmp: Path) -> bytes:
    header_size = header_flash_size(firmware)
    size = recipe.flash_size or header_size
    args = recipe.tool_args(header_size)
    if args:
        firmware = convert(firmware, args, tmp)
    if inspect.BOOTLOADER_OFFSET + len(firmware) > size:
        raise ImageError(
            f"{recipe.firmware.name} ({len(firmware)} bytes at 0x1000) does not fit a "
            f"{size_name(size)} flash"
        )
    flash = bytearray(b"\xff" * size)
    flash[inspect.BOOTLOADER_OFFSET : inspect.BOOTLOADER_OFFSET + len(firmware)] = firmware
    table = inspect.parse_table(bytes(flash))
    if not table:
        raise ImageError(f"{recipe.firmware}: no partition table at 0x8000")
    for part in table:
        if part.offset + part.size > size:
            raise ImageError(
                f"partition {part.name} ends at 0x{part.offset + part.size:x}, beyond the "
                f"{size_name(size)} flash: convert the table (--layout ota or a resize)"
            )
    if recipe.app:
        slot = next(p for p in table if p.type == inspect.APP_TYPE)
        _write_partition(flash, slot, inspect.read_input(recipe.app), recipe.app)
    if recipe.vfs_files or (recipe.format_vfs and any(p.name == "vfs" for p in table)):
        _make_vfs(flash, _partition(table, "vfs"), recipe.vfs_files)
    for name, path in recipe.writes:
        part, data = _partition(table, name), inspect.read_input(path)
        if part.offset + len(data) > size:
            raise ImageError(f"{path.name} written at {name} runs past the end of the flash")
        flash[part.offset : part.offset + len(data)] = data
    return bytes(flash)


def payload(recipe: Recipe, kind: str, cache: Path | None = None) -> Path:
    """An OTA payload made from the recipe's firmware, converted exactly as the image is.

    `full-image`: the converted firmware file itself (what the report sent); `app`: its
    app image (`mp-image-tool-esp32 -x`); `truncated-app`: the first half of the app;
    `corrupt-app`: the app with one byte flipped in the middle (right length, wrong
    content: an undetected transfer error).
    """
    kinds = ("full-image", "app", "truncated-app", "corrupt-app")
    if kind not in kinds:
        raise ImageError(f"unknown payload kind {kind!r}: use one of {', '.join(kinds)}")
    cache = cache or cache_dir()
    out = cache / f"{_digest(recipe)}-{kind}.bin"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".payload-") as tmp:
        firmware = _firmware_bytes(recipe.firmware)
        args = recipe.tool_args(header_flash_size(firmware))
        full = convert(firmware, args, Path(tmp)) if args else firmware
        app = b"" if kind == "full-image" else convert(full, ["-x"], Path(tmp))
        middle = len(app) // 2
        if kind == "full-image":
            data = full
        elif kind == "app":
            data = app
        elif kind == "truncated-app":
            data = app[:middle]
        else:
            data = app[:middle] + bytes([app[middle] ^ 0xFF]) + app[middle + 1 :]
        _publish(tmp, data, out)
    return out


def convert(firmware: bytes, args: list[str], tmp: Path) -> bytes:
    """Run mp-image-tool-esp32 on a private copy: the user's own conversion, exactly."""
    src, dst = tmp / "firmware.bin", tmp / "converted.bin"
    src.write_bytes(firmware)
    cmd = [sys.executable, "-c", "from mp_image_tool_esp32.main import main; main()",
           str(src), *args, "-o", str(dst)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    if run.returncode != 0 or not dst.exists():
        said = (run.stderr.strip() or run.stdout.strip()).splitlines()
        raise ImageError(
            f"mp-image-tool-esp32 {' '.join(args)} failed: {said[-1] if said else 'no output'}"
        )
    return dst.read_bytes()


def _partition(table: list[inspect.Partition], name: str) -> inspect.Partition:
    part = next((p for p in table if p.name == name), None)
    if part is None:
        names = ", ".join(p.name for p in table)
        raise ImageError(f"the image has no partition named {name!r} (it has: {names})")
    return part


def _write_partition(flash: bytearray, part: inspect.Partition, data: bytes, src: Path) -> None:
    if len(data) > part.size:
        raise ImageError(
            f"{src.name} ({len(data)} bytes) does not fit partition {part.name} ({part.size} bytes)"
        )
    flash[part.offset : part.offset + part.size] = data + b"\xff" * (part.size - len(data))


def _make_vfs(
    flash: bytearray, part: inspect.Partition, files: tuple[tuple[Path, str], ...]
) -> None:
    """Format the vfs as MicroPython would on first boot, with `files` already in it."""
    from littlefs import LittleFS  # only image builds with a vfs need it

    fs = LittleFS(block_size=VFS_BLOCK, block_count=part.size // VFS_BLOCK, **LFS_OPTIONS)
    with fs.open("boot.py", "w") as f:
        f.write("# This file is executed on every boot (including wake-boot from deepsleep)\n")
    for src, dst in files:
        for name, member in _members(src):
            _put(fs, member, f"{dst.rstrip('/')}/{name}" if name else dst)
    image = bytes(fs.context.buffer)
    flash[part.offset : part.offset + len(image)] = image


def _put(fs: object, src: Path, dst: str) -> None:
    dst = "/" + dst.lstrip("/")
    parent = dst.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(dst, "wb") as f:
        f.write(src.read_bytes())


def run_copy(image: Path, run_dir: Path) -> Path:
    """The per-run flash file QEMU writes into; the cached image stays pristine."""
    dst = run_dir / "flash.bin"
    shutil.copyfile(image, dst)
    os.chmod(dst, 0o644)
    return dst
