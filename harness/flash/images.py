"""Flash images: official firmware in, an exact 2/4/8/16 MiB flash file out.

A `Recipe` says how: which firmware, what flash size, and the conversion users make
with mp-image-tool-esp32, optionally an app image for the first app slot, files for
MicroPython's filesystem, and raw writes at partition offsets. `plan()` turns it into
the tool's options by the release rules (a `vfs` line exists up to v1.25 only), and
the conversion runs the real mp-image-tool-esp32 on a private copy, so the bytes are
those of the user's own command. QEMU picks its flash chip by file size, so images are
padded with 0xFF to exactly the flash size; other sizes are refused up front.

Built images are cached under their recipe's content hash, written atomically, with a
sidecar (`<hash>.json`) recording the conversion chosen, the filesystem region and the
image's own size and sha256; an entry that does not match its sidecar (a full disk
truncated it, someone edited it) is rebuilt, never booted. Inputs are only ever read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from .. import paths
from ..errors import ImageError
from . import formats
from .firmware import FirmwareFacts
from .inputs import read_firmware, read_input
from .size import MB, FlashSize

LAYOUTS = ("keep", "ota")
Layout = Literal["keep", "ota"]
FS_BLOCK = 4096
# MicroPython mounts its filesystem with VfsLfs2(bdev) (readsize=32, progsize=32,
# lookahead=32); littlefs on-disk version 2.0 is readable by every release we support.
LFS_OPTIONS: dict[str, int] = {"read_size": 32, "prog_size": 32, "lookahead_size": 32,
                               "disk_version": 0x00020000}  # fmt: skip
# MicroPython's partitions-4MiB-ota.csv, the OTA variant's table from v1.26 on (no vfs line)
OTA_TABLE = "nvs=0x4000,otadata=0x2000,phy_init=0x1000,ota_0={slot:#x},ota_1={slot:#x}"
OTA_SLOT = 0x180000
APP_ALIGN = 0x10000
PAYLOAD_KINDS = ("full-image", "app", "truncated-app", "corrupt-app")
# `app-of:FILE`: the app image of another release (an update), as its own .app-bin is
APP_OF = "app-of:"
CACHE_FORMAT = 3  # bump when the bytes a recipe makes change


@dataclass(frozen=True)
class Recipe:
    """How to make one flash image. `flash_size` None keeps the firmware's own size."""

    firmware: Path
    flash_size: FlashSize | None = None
    layout: Layout = "keep"
    resize: str | None = None  # mp-image-tool-esp32 --resize; default vfs=0 when converting
    app: Path | None = None  # written into the first app slot (ota_0 or factory)
    vfs_files: tuple[tuple[Path, str], ...] = field(default_factory=tuple)
    format_vfs: bool = True  # littlefs made as MicroPython's first boot would (saves ~0.5 s/boot)
    header_size: FlashSize | None = None  # claim another size in the header than the chip has
    # written at a partition's offset last, as `esptool write_flash` would: may run past
    # the partition's end (an app larger than its slot), never past the flash's
    writes: tuple[tuple[str, Path], ...] = field(default_factory=tuple)

    def replace(self, **changes: Any) -> Recipe:
        """This recipe with `changes` (field: value): the one way a recipe is copied."""
        return dataclasses.replace(self, **changes)

    def plain(self) -> Recipe:
        """The same conversion without files or writes (what payloads are made from)."""
        return self.replace(app=None, vfs_files=(), writes=(), format_vfs=False)


@dataclass(frozen=True)
class Conversion:
    """The mp-image-tool-esp32 options a recipe comes to for one release, and why."""

    args: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def command(self, firmware: str) -> str:
        if not self.args:
            return f"{firmware} as it is (no conversion)"
        return f"mp-image-tool-esp32 {firmware} {' '.join(self.args)}"


def plan(recipe: Recipe, facts: FirmwareFacts) -> Conversion:
    """The conversion users make on this release: `-f 16M --resize vfs=0` where the table
    has a `vfs` line, `-f 16M` alone where it has none (MicroPython >= v1.26 makes the
    filesystem at boot from the flash after the last partition)."""
    args: list[str] = []
    notes: list[str] = []
    size = recipe.header_size or recipe.flash_size or facts.header_flash_size
    if size != facts.header_flash_size:
        args += ["-f", size.tool_arg]
    if recipe.layout == "ota":
        # the slots hold the whole firmware file, so that an app and a mistaken full image
        # both fit, as they do in the OTA variant's own 0x180000 slots
        slot = max(OTA_SLOT, -(-facts.file_size // APP_ALIGN) * APP_ALIGN)
        table = OTA_TABLE.format(slot=slot) + (",vfs=0" if facts.fs_in_table else "")
        args += ["--table", table]
        notes.append(
            "the table of MicroPython's OTA variant (partitions-4MiB-ota.csv"
            + (", with the vfs line releases up to v1.25 have)" if facts.fs_in_table
               else ": no vfs line, as from v1.26)")
        )  # fmt: skip
        if slot != OTA_SLOT:
            notes.append(
                f"slots grown from {OTA_SLOT:#x} to {slot:#x} to hold this {facts.file_size}-byte "
                "firmware (the OTA variant is built for size; this build is not)"
            )
    # growing the flash grows the filesystem to its end (an OTA table fills it already);
    # a deliberate header mismatch keeps the table as it is
    converting = bool(args) and not recipe.header_size and recipe.layout != "ota"
    resize = recipe.resize if recipe.resize is not None else ("vfs=0" if converting else None)
    kept = []
    for item in filter(None, (resize or "").split(",")):
        name = item.split("=", 1)[0].strip()
        if name in formats.FS_LABELS and not facts.fs_in_table:
            notes.append(
                f"--resize {item} left out: {facts.version or 'this release'} has no {name} line "
                "in its partition table (MicroPython makes the filesystem at boot, up to the "
                "end of the flash)"
            )
        else:
            kept.append(item)
    if kept:
        args += ["--resize", ",".join(kept)]
    return Conversion(tuple(args), tuple(notes))


@dataclass(frozen=True)
class BuiltImage:
    """A flash image in the cache and what went into it."""

    path: Path
    size: int
    sha256: str
    firmware: str
    firmware_version: str | None
    conversion: str  # the mp-image-tool-esp32 command line, as a user would type it
    notes: tuple[str, ...]
    filesystem: formats.FsRegion | None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        return data

    @classmethod
    def from_json(cls, path: Path, data: dict[str, Any]) -> BuiltImage:
        fs = data.get("filesystem")
        return cls(
            path, int(data["size"]), str(data["sha256"]), str(data["firmware"]),
            data.get("firmware_version"), str(data["conversion"]), tuple(data.get("notes", ())),
            formats.FsRegion(**fs) if fs else None,
        )  # fmt: skip


def _digest(recipe: Recipe) -> str:
    h = hashlib.sha256()
    for path in [recipe.firmware, *(p for p in [recipe.app] if p), *(w for _, w in recipe.writes)]:
        h.update(hashlib.sha256(read_input(path)).digest())
    for src, _ in recipe.vfs_files:  # files may be empty (an __init__.py)
        for name, member in _members(src):
            h.update(name.encode() + hashlib.sha256(member.read_bytes()).digest())
    params = {
        "size": str(recipe.flash_size), "layout": recipe.layout, "resize": recipe.resize,
        "vfs": [dst for _, dst in recipe.vfs_files], "header": str(recipe.header_size),
        "writes": [name for name, _ in recipe.writes], "format_vfs": recipe.format_vfs,
        "tool": version("mp-image-tool-esp32"), "lfs": LFS_OPTIONS, "v": CACHE_FORMAT,
    }  # fmt: skip
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _members(path: Path) -> list[tuple[str, Path]]:
    """A file, or every file under a folder, with names relative to it."""
    if not path.exists():
        raise ImageError(f"{path}: no such file or folder to put into the filesystem")
    if path.is_dir():
        return [(p.relative_to(path).as_posix(), p) for p in sorted(path.rglob("*")) if p.is_file()]
    return [("", path)]


def publish(data: bytes, out: Path, meta: dict[str, Any] | None = None) -> None:
    """Write `data` (and its sidecar) atomically: a parallel reader sees all of it or nothing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".publish-") as tmp:
        staged = Path(tmp) / "staged"
        staged.write_bytes(data)
        if meta is not None:
            side = Path(tmp) / "meta"
            side.write_text(json.dumps(meta, indent=2) + "\n")
            os.replace(side, out.with_suffix(".json"))
        os.replace(staged, out)


def _cached(out: Path) -> dict[str, Any] | None:
    """The sidecar of a cache entry whose bytes still match it; None: (re)build it."""
    side = out.with_suffix(".json")
    try:
        meta = json.loads(side.read_text())
        if not isinstance(meta, dict) or out.stat().st_size != meta["size"]:
            return None
        if hashlib.sha256(out.read_bytes()).hexdigest() != meta["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def build(recipe: Recipe, cache: Path | None = None) -> Path:
    """The path of the flash image for `recipe`, built if not (correctly) cached."""
    return build_image(recipe, cache).path


def build_image(recipe: Recipe, cache: Path | None = None) -> BuiltImage:
    if recipe.layout not in LAYOUTS:
        raise ImageError(f"unknown layout {recipe.layout!r}: use one of {', '.join(LAYOUTS)}")
    firmware = read_firmware(recipe.firmware)
    out = (cache or paths.image_cache()) / f"{_digest(recipe)}.bin"
    meta = _cached(out)
    if meta is None:
        flash, image = _make_flash(recipe, firmware, out)
        publish(flash, out, image.to_json())
        return image
    return BuiltImage.from_json(out, meta)


def _make_flash(recipe: Recipe, firmware: bytes, out: Path) -> tuple[bytes, BuiltImage]:
    facts = FirmwareFacts.of(firmware, recipe.firmware.name)
    size = recipe.flash_size or facts.header_flash_size
    conversion = plan(recipe, facts)
    if conversion.args:
        firmware = convert(firmware, list(conversion.args), conversion, recipe.firmware.name)
    flash, table = _lay_out(recipe, firmware, size)
    if recipe.app:
        slot = next(p for p in table if p.is_app)
        _write_partition(flash, slot, read_input(recipe.app), recipe.app)
    region = formats.fs_region(table, size.bytes)
    if recipe.vfs_files or recipe.format_vfs:
        if region is None and recipe.vfs_files:
            raise ImageError(
                f"this {size} image of {recipe.firmware.name} has no room for a "
                f"filesystem (the partitions end at 0x{table.end:x}): use a bigger flash"
            )
        if region is not None:
            _make_fs(flash, region, recipe, facts, size)
    for name, path in recipe.writes:
        offset, data = _offset(table, region, name), read_input(path)
        if offset + len(data) > size.bytes:
            raise ImageError(f"{path.name} written at {name} runs past the end of the flash")
        flash[offset : offset + len(data)] = data
    data = bytes(flash)
    return data, BuiltImage(
        out, len(data), hashlib.sha256(data).hexdigest(), str(recipe.firmware), facts.version,
        conversion.command(recipe.firmware.name), conversion.notes, region,
    )  # fmt: skip


def _lay_out(
    recipe: Recipe, firmware: bytes, size: FlashSize
) -> tuple[bytearray, formats.PartitionTable]:
    """The converted firmware at its chip's bootloader offset (0x1000 on the ESP32) of an
    erased flash of `size`; its table must fit."""
    at = formats.firmware_offset(firmware) or 0
    if at + len(firmware) > size.bytes:
        raise ImageError(f"{recipe.firmware.name} ({len(firmware)} bytes at {at:#x}) does not "
                         f"fit a {size} flash")  # fmt: skip
    flash = bytearray(b"\xff" * size.bytes)
    flash[at : at + len(firmware)] = firmware
    table = formats.parse_table(bytes(flash))
    if not len(table):
        raise ImageError(f"{recipe.firmware}: no partition table at 0x8000")
    beyond = next((part for part in table if part.end > size.bytes), None)
    if beyond is not None:
        raise ImageError(
            f"partition {beyond.name} ends at 0x{beyond.end:x}, beyond the {size} "
            "flash: convert the table (--layout ota or a resize)"
        )
    return flash, table


def payload(recipe: Recipe, kind: str, cache: Path | None = None) -> Path:
    """An OTA payload made from the recipe's firmware, converted exactly as the image is.

    `full-image`: the converted firmware file itself (what the report sent); `app`: its
    app image (`mp-image-tool-esp32 -x`); `truncated-app`: the first half of the app;
    `corrupt-app`: the app with one byte flipped in the middle (right length, wrong
    content: an undetected transfer error).
    """
    if kind not in PAYLOAD_KINDS:
        raise ImageError(f"unknown payload kind {kind!r}: use one of {', '.join(PAYLOAD_KINDS)}")
    out = (cache or paths.image_cache()) / f"{_digest(recipe.plain())}-{kind}.bin"
    if _cached(out) is not None:
        return out
    firmware = read_firmware(recipe.firmware)
    conversion = plan(recipe, FirmwareFacts.of(firmware, recipe.firmware.name))
    full = firmware
    if conversion.args:
        full = convert(firmware, list(conversion.args), conversion, recipe.firmware.name)
    app = b"" if kind == "full-image" else convert(full, ["-x"], None, recipe.firmware.name)
    middle = len(app) // 2
    data = {
        "full-image": full,
        "app": app,
        "truncated-app": app[:middle],
        "corrupt-app": app[:middle] + bytes([app[middle] ^ 0xFF]) + app[middle + 1 :]
        if app
        else b"",
    }[kind]
    meta = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "kind": kind,
            "conversion": conversion.command(recipe.firmware.name)}  # fmt: skip
    publish(data, out, meta)
    return out


def is_payload(name: str) -> bool:
    """A payload the harness makes: a kind of the cell's firmware, or `app-of:FILE`."""
    return name in PAYLOAD_KINDS or name.startswith(APP_OF)


def app_of(path: Path, cache: Path | None = None) -> Path:
    """The app image of a release, what an OTA of it sends (`app-of:` payloads): an app
    image as it is, or the app of a firmware .bin extracted with `mp-image-tool-esp32 -x`
    and not converted, as micropython.org's own `.app-bin` of the release is."""
    data = read_input(path)
    kind = formats.classify(data)
    if kind == "app":
        return path
    if kind not in ("firmware", "flash"):
        raise ImageError(f"app-of {path}: not a firmware image ({kind}): give a MicroPython "
                         "firmware .bin or an app image (.app-bin)")  # fmt: skip
    firmware = read_firmware(path)
    digest = hashlib.sha256(firmware).hexdigest()[:24]
    out = (cache or paths.image_cache()) / f"{digest}-app-of-{CACHE_FORMAT}.bin"
    if _cached(out) is None:
        app = convert(firmware, ["-x"], None, path.name)
        publish(app, out, {"size": len(app), "sha256": hashlib.sha256(app).hexdigest(),
                           "kind": "app-of", "conversion": f"mp-image-tool-esp32 "
                           f"{path.name} -x"})  # fmt: skip
    return out


TOOL_ERROR = re.compile(r"^(\w*(?:Error|Exception)): (.*)$")


def tool_error(output: list[str]) -> str:
    """mp-image-tool-esp32's own error (`PartitionError: ...`, with its indented
    continuation lines), not a fragment of the tables it prints around it."""
    for i, line in enumerate(output):
        if TOOL_ERROR.match(line.strip()) and not line.startswith(" "):
            more = [m.strip() for m in itertools.takewhile(lambda m: m.startswith("  "),
                                                          output[i + 1 :])]  # fmt: skip
            return " ".join([line.strip(), *more]).rstrip(":")
    return next((line.strip() for line in reversed(output) if line.strip()), "no output")


def convert(
    firmware: bytes, args: list[str], conversion: Conversion | None = None, name: str = "firmware"
) -> bytes:
    """Run mp-image-tool-esp32 on a private copy: the user's own conversion, exactly.

    A failure is reported with the tool's own error line and the command that was run.
    """
    with tempfile.TemporaryDirectory(prefix="eoh-convert-") as tmp:
        src, dst = Path(tmp) / "firmware.bin", Path(tmp) / "converted.bin"
        src.write_bytes(firmware)
        cmd = [sys.executable, "-c", "from mp_image_tool_esp32.main import main; main()",
               str(src), *args, "-o", str(dst)]  # fmt: skip
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env)
        if run.returncode == 0 and dst.exists():
            return dst.read_bytes()
    said = tool_error((run.stdout + "\n" + run.stderr).splitlines())
    command = f"mp-image-tool-esp32 {name} {' '.join(args)}"
    why = f" (chosen: {'; '.join(conversion.notes)})" if conversion and conversion.notes else ""
    raise ImageError(f"{command} failed: {said}{why}")


def _offset(table: formats.PartitionTable, region: formats.FsRegion | None, name: str) -> int:
    """Where a write named `name` goes: a partition, or the filesystem region (`vfs`) that
    releases from v1.26 make at boot without a line in the table."""
    part = table.get(name)
    if part is not None:
        return part.offset
    if region is not None and name == region.label:
        return region.offset
    raise ImageError(f"the image has no partition named {name!r} (it has: "
                     f"{', '.join(table.names())})")  # fmt: skip


def _write_partition(flash: bytearray, part: formats.Partition, data: bytes, src: Path) -> None:
    if len(data) > part.size:
        raise ImageError(
            f"{src.name} ({len(data)} bytes) does not fit partition {part.name} ({part.size} bytes)"
        )
    flash[part.offset : part.end] = data + b"\xff" * (part.size - len(data))


def _kib(n: int) -> str:
    return f"{n / MB:.2f} MB" if n >= MB else f"{n / 1024:.0f} KB"


def _make_fs(
    flash: bytearray,
    region: formats.FsRegion,
    recipe: Recipe,
    facts: FirmwareFacts,
    size: FlashSize,
) -> None:
    """Format the filesystem as MicroPython would on first boot, with the recipe's files in it."""
    from littlefs import LittleFS, LittleFSError  # only image builds with files need it

    fs = LittleFS(
        block_size=FS_BLOCK,
        block_count=region.size // FS_BLOCK,
        read_size=LFS_OPTIONS["read_size"],
        prog_size=LFS_OPTIONS["prog_size"],
        lookahead_size=LFS_OPTIONS["lookahead_size"],
        disk_version=LFS_OPTIONS["disk_version"],
    )
    try:
        with fs.open("boot.py", "w") as f:
            f.write("# This file is executed on every boot (including wake-boot from deepsleep)\n")
        for src, dst in recipe.vfs_files:
            for name, member in _members(src):
                _put(fs, member, f"{dst.rstrip('/')}/{name}" if name else dst)
    except LittleFSError as exc:
        if exc.code != LittleFSError.Error.LFS_ERR_NOSPC:
            raise ImageError(f"cannot write the filesystem image: {exc}") from None
        files = ", ".join(
            f"{dst} ({_kib(sum(m.stat().st_size for _, m in _members(src)))})"
            for src, dst in recipe.vfs_files
        )
        raise ImageError(
            f"{files} do not fit the {_kib(region.size)} filesystem of this {size} "
            f"{facts.version or ''} image ({region.label} at {region.offset:#x}): use a 16MB "
            "image (--flash-size 16MB, or flash_size: [16MB] in the scenario)"
        ) from None
    image = bytes(fs.context.buffer)
    flash[region.offset : region.offset + len(image)] = image


def _put(fs: Any, src: Path, dst: str) -> None:
    dst = "/" + dst.lstrip("/")
    parent = dst.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(dst, "wb") as f:
        f.write(src.read_bytes())
