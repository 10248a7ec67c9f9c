"""What a file is, and what the bootloader and MicroPython will do with it: a `FileReport`.

A view over harness.flash.formats: `examine()` reads one file into a `FileReport`, and
`FileReport.to_json()` is its stable JSON document (`harness inspect --json`, schema
`SCHEMA_VERSION`, docs/inspect.md), which scenarios assert on (`assert_inspect`). The
document carries two sentences for people, `summary` and `ota_payload.verdict`, made
here and nowhere else; the text form is harness.frontends.inspect.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import chips
from ..errors import ImageError
from . import formats
from .inputs import read_input
from .size import FlashSize

SCHEMA_VERSION = 1  # keys are only ever added within a schema version


@dataclass(frozen=True)
class SlotReport:
    """One app partition: what lies in it and what the bootloader will think of it."""

    kind: str  # app | firmware | blank | no app image
    check: formats.AppCheck

    def to_json(self) -> dict[str, Any]:
        if self.kind in ("blank", "no app image"):
            return {"kind": self.kind, "ok": False, "problems": self.check.problems}
        return {"kind": self.kind, **asdict(self.check)}


@dataclass(frozen=True)
class PayloadVerdict:
    ok: bool
    verdict: str


@dataclass
class FileReport:
    file: str
    size: int
    sha256: str
    kind: formats.FileKind
    summary: str = ""
    chip: str | None = None
    flash_size: str | None = None
    table: formats.PartitionTable | None = None
    otadata: tuple[formats.OtaRecord, ...] | None = None
    boot: formats.BootChoice | None = None
    app: formats.AppCheck | None = None  # the app image (kind app), or the first app slot's
    slots: dict[str, SlotReport] = field(default_factory=dict)
    ota_payload: PayloadVerdict = PayloadVerdict(False, "")
    filesystem: formats.FsRegion | None = None
    filesystem_flash_size: int | None = None  # the flash size the region was computed for

    def to_json(self) -> dict[str, Any]:
        first_app = next((s for s in self.slots.values() if s.kind == "app"), None)
        app: dict[str, Any] | None = None
        if self.kind == "app" and self.app is not None:
            app = asdict(self.app)
        elif first_app is not None:
            app = first_app.to_json()
        fs = None
        if self.filesystem is not None:
            fs = {**asdict(self.filesystem), "flash_size": self.filesystem_flash_size}
        return {
            "schema": SCHEMA_VERSION,
            "file": self.file,
            "size": self.size,
            "sha256": self.sha256,
            "kind": self.kind,
            "summary": self.summary,
            "chip": self.chip,
            "flash_size": self.flash_size,
            "partitions": [asdict(p) for p in self.table] if self.table is not None else None,
            "otadata": [asdict(r) for r in self.otadata] if self.otadata is not None else None,
            "boot": asdict(self.boot) if self.boot is not None else None,
            "app": app,
            "slots": {n: s.to_json() for n, s in self.slots.items()}
            if self.table is not None
            else None,
            "ota_payload": asdict(self.ota_payload),
            "filesystem": fs,
        }


def examine(path: Path, data: bytes | None = None) -> FileReport:
    """Everything `harness inspect` says about one file."""
    data = read_input(path) if data is None else data
    kind = formats.classify(data)
    if kind == "unknown":
        raise ImageError(f"{path}: not an ESP32 image (no 0xE9 image header at 0 or at a "
                         "bootloader's offset)")  # fmt: skip
    rep = FileReport(str(path), len(data), hashlib.sha256(data).hexdigest(), kind)
    if kind == "app":
        app = formats.check_app(data)
        rep.chip, rep.flash_size, rep.app = app.chip, app.flash_size, app
        rep.ota_payload = PayloadVerdict(app.ok, payload_verdict(kind, app))
    elif kind in ("firmware", "flash"):
        flash = formats.as_flash(data)
        at = formats.flash_bootloader(data) if kind == "flash" else formats.firmware_offset(data)
        header = formats.ImageHeader.parse(flash[at or 0 :])
        boot = formats.check_app(flash[at or 0 :], chip=header.chip if header else None)
        rep.chip, rep.flash_size = boot.chip, boot.flash_size
        rep.table = formats.parse_table(flash)
        rep.otadata = formats.read_otadata(flash, rep.table)
        rep.boot = formats.boot_choice(rep.table, rep.otadata) if rep.table else None
        # the bootloader reads an image's segments wherever they lead, even past its
        # slot's end, and only then compares the length with the slot
        rep.slots = {
            p.name: _slot(flash[p.offset :], p.size, boot.chip)
            for p in rep.table
            if p.is_app and p.offset < len(flash)
        }
        # a whole flash image: the chip is as big as the file (QEMU picks it so); a
        # firmware file: the size its header was built for
        header_size = FlashSize.parse(boot.flash_size) if boot.flash_size else None
        size = len(data) if kind == "flash" else header_size.bytes if header_size else None
        rep.filesystem_flash_size = size
        rep.filesystem = formats.fs_region(rep.table, size) if size else None
        rep.ota_payload = PayloadVerdict(False, payload_verdict(kind, boot))
    else:
        rep.ota_payload = PayloadVerdict(False, f"not an app image ({kind})")
    rep.summary = _summary(rep)
    return rep


def _slot(data: bytes, size: int, chip: str | None) -> SlotReport:
    if data[:1] != bytes([formats.APP_MAGIC]):
        state = "blank" if data[:4096].count(0xFF) == len(data[:4096]) else "no app image"
        return SlotReport(state, formats.AppCheck(False, [f"{state}: invalid magic byte"]))
    kind = "firmware" if formats.classify(data[:size]) == "firmware" else "app"
    return SlotReport(kind, formats.check_app(data, size, chip))


def payload_verdict(kind: str, first: formats.AppCheck) -> str:
    """What an OTA of this file will come to, in one sentence."""
    if kind == "app":
        if first.ok:
            return "app image: a correct OTA payload"
        return "app image the bootloader will reject: " + "; ".join(first.problems)
    if kind not in ("firmware", "flash"):
        return f"not an app image ({kind})"
    chip = chips.by_name(first.chip)
    whole = "whole flash" if kind == "flash" else "full firmware"
    of = "" if chip is chips.DEFAULT else f" for {first.chip}"
    seg = first.segments[0] if first.segments else None
    verdict = f"this is a {whole} image{of} (bootloader + partition table + app), not an app image"
    if (
        seg is not None
        and chip is not None
        and chip.overlaps_bootloader(seg.addr, seg.addr + seg.length)
    ):
        verdict += (
            f": its first segment loads at {seg.addr_hex}, in the bootloader's own memory, so "
            "an OTA of it is rejected by the bootloader with 'overlaps bootloader data'. Use "
            "the app image instead (micropython.bin / .app-bin, or `mp-image-tool-esp32 FILE -x`)"
        )
    else:
        verdict += (": an OTA slot takes the app alone (micropython.bin / `mp-image-tool-esp32 "
                    "FILE -x`)")  # fmt: skip
    if chip is None or not chip.boots:
        verdict += f"; {chip.why_not() if chip else 'the harness does not know this chip'}"
    return verdict


def _summary(rep: FileReport) -> str:
    if rep.kind == "app" and rep.app is not None:
        app = rep.app
        what = f"app image for {app.chip}, ESP-IDF {app.idf_version}, built {app.built}"
        return what + ("" if app.ok else f" — PROBLEMS: {'; '.join(app.problems)}")
    if rep.kind in ("firmware", "flash"):
        slot = rep.boot.slot if rep.boot else None
        first = next((s.check for s in rep.slots.values() if s.kind == "app"), None)
        built = (f", app built with ESP-IDF {first.idf_version} on {first.built}"
                 if first is not None and first.idf_version else "")  # fmt: skip
        return (
            f"{'whole flash image' if rep.kind == 'flash' else 'full firmware image'} "
            f"(bootloader + partition table + app) for {rep.chip}, "
            f"{rep.flash_size} flash{built}; bootloader will pick {slot}"
        )
    return f"{rep.kind}: not an ESP32 image"
