"""Host-side reading of ESP32 images: what a file is, and what the bootloader will do.

Works on any file: a bare app image (`.app-bin`, `micropython.bin`), a firmware file
that starts with the bootloader (written at 0x1000), or a whole flash image (starts
at 0). App images are parsed with esptool's image classes; the partition table,
otadata and the bootloader's slot choice follow ESP-IDF's rules
(bootloader_utility.c, bootloader_common.c), including app rollback.

`report()` gives the stable JSON form that `harness inspect --json` prints and that
scenarios assert on (schema `SCHEMA_VERSION`, documented in the README).
"""

from __future__ import annotations

import binascii
import hashlib
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ImageError

SCHEMA_VERSION = 1
BOOTLOADER_OFFSET = 0x1000
TABLE_OFFSET = 0x8000
APP_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
CHIP_IDS = {0: "esp32", 2: "esp32s2", 5: "esp32c3", 9: "esp32s3", 12: "esp32c2", 13: "esp32c6"}
FLASH_SIZES = {0: "1MB", 1: "2MB", 2: "4MB", 3: "8MB", 4: "16MB"}
OTA_STATES = {0: "NEW", 1: "PENDING_VERIFY", 2: "VALID", 3: "INVALID", 4: "ABORTED",
              0xFFFFFFFF: "UNDEFINED"}  # fmt: skip
# The ESP32 bootloader keeps its own data and the ROM stack at the top of internal
# DRAM; an app segment loading there is refused ("overlaps bootloader data/stack").
BOOTLOADER_DRAM = (0x3FFE_0000, 0x4000_0000)
APP_TYPE, DATA_TYPE = 0, 1
SUBTYPE_FACTORY, SUBTYPE_OTA_DATA, SUBTYPE_TEST = 0x00, 0x00, 0x20


@dataclass
class Partition:
    name: str
    type: int
    subtype: int
    offset: int
    size: int

    @property
    def is_ota_app(self) -> bool:
        return self.type == APP_TYPE and 0x10 <= self.subtype < 0x20


@dataclass
class OtaRecord:
    sector: int
    seq: int
    state: str
    crc_ok: bool
    valid: bool  # counts for the bootloader: seq set, CRC right, state not INVALID/ABORTED

    @classmethod
    def parse(cls, sector: int, raw: bytes) -> OtaRecord:
        seq = struct.unpack_from("<I", raw, 0)[0]
        state_raw, crc = struct.unpack_from("<II", raw, 24)
        crc_ok = crc == ota_crc(seq)
        state = OTA_STATES.get(state_raw, f"0x{state_raw:08x}")
        valid = seq != 0xFFFFFFFF and crc_ok and state not in ("INVALID", "ABORTED")
        return cls(sector, seq, state, crc_ok, valid)


@dataclass
class AppCheck:
    """What the bootloader would think of the app image at the start of `data`."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    chip: str | None = None
    segments: list[dict[str, int | str]] = field(default_factory=list)
    length: int | None = None
    checksum_ok: bool | None = None
    sha256_appended: bool | None = None
    sha256_ok: bool | None = None
    idf_version: str | None = None
    built: str | None = None
    flash_size: str | None = None


def ota_crc(seq: int) -> int:
    """ESP-IDF's otadata CRC: crc32_le(UINT32_MAX, &ota_seq, 4)."""
    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


def parse_table(flash: bytes, offset: int = TABLE_OFFSET) -> list[Partition]:
    parts = []
    for pos in range(offset, offset + 0xC00, 32):
        entry = flash[pos : pos + 32]
        if len(entry) < 32 or entry[:2] != b"\xaa\x50":
            break
        ptype, subtype, poff, psize = struct.unpack_from("<BBII", entry, 2)
        name = entry[12:28].split(b"\0")[0].decode("ascii", "replace")
        parts.append(Partition(name, ptype, subtype, poff, psize))
    return parts


def check_app(data: bytes, slot_size: int | None = None) -> AppCheck:
    """Parse one app image with esptool and apply the bootloader's checks."""
    check = AppCheck(ok=False)
    if not data or data[0] != APP_MAGIC:
        first = f"0x{data[0]:02x}" if data else "nothing"
        check.problems.append(f"invalid magic byte {first} (expected 0xe9): no app image here")
        return check
    check.chip = CHIP_IDS.get(struct.unpack_from("<H", data, 12)[0], "unknown")
    check.flash_size = FLASH_SIZES.get(data[3] >> 4)
    try:
        image = _load_esptool_image(data)
    except (struct.error, ValueError, IndexError) as exc:
        check.problems.append(f"image is cut short or malformed: {exc}")
        return check
    for seg in image.segments:
        check.segments.append(
            {"addr": seg.addr, "addr_hex": f"0x{seg.addr:08x}", "length": len(seg.data)}
        )
        end = seg.addr + len(seg.data)
        if BOOTLOADER_DRAM[0] <= seg.addr < BOOTLOADER_DRAM[1]:
            check.problems.append(
                f"segment at 0x{seg.addr:08x}-0x{end:08x} loads into the bootloader's own "
                "memory: the bootloader refuses it (overlaps bootloader data)"
            )
    check.length = image.data_length + (32 if image.append_digest else 0)
    check.checksum_ok = image.checksum == image.calculate_checksum()
    if not check.checksum_ok:
        check.problems.append("checksum mismatch (bootloader: Checksum failed)")
    check.sha256_appended = bool(image.append_digest)
    if image.append_digest:
        check.sha256_ok = image.stored_digest == image.calc_digest
        if not check.sha256_ok:
            check.problems.append("appended SHA-256 does not match (Image hash failed)")
    if check.chip != "esp32":
        check.problems.append(f"built for {check.chip}, not esp32")
    if slot_size is not None and check.length > slot_size:
        check.problems.append(
            f"image length {check.length} does not fit its slot of {slot_size} bytes"
        )
    desc = data[32:288]
    if len(desc) >= 256 and struct.unpack_from("<I", desc, 0)[0] == APP_DESC_MAGIC:
        text = [desc[a:b].split(b"\0")[0].decode("ascii", "replace") for a, b in _DESC_FIELDS]
        check.built, check.idf_version = f"{text[1]} {text[0]}".strip() or None, text[2] or None
    check.ok = not check.problems
    return check


# esp_app_desc_t: time[16] at 80, date[16] at 96, idf_ver[32] at 112
_DESC_FIELDS = [(80, 96), (96, 112), (112, 144)]


def _load_esptool_image(data: bytes):
    """esptool is imported here, not at the top: booting never needs it (50 ms)."""
    from esptool.bin_image import LoadFirmwareImage
    from esptool.util import FatalError

    try:
        return LoadFirmwareImage("esp32", data)
    except FatalError as exc:
        raise ValueError(str(exc)) from None


def classify(data: bytes) -> str:
    """'flash' (whole image from 0), 'firmware' (bootloader+table+app from 0x1000),
    'app', 'blank' or 'unknown'."""
    if not data or data.count(0xFF) == len(data):
        return "blank"
    if (
        len(data) > TABLE_OFFSET + 2
        and data[BOOTLOADER_OFFSET] == APP_MAGIC
        and (data[TABLE_OFFSET : TABLE_OFFSET + 2] == b"\xaa\x50")
    ):
        return "flash"
    table = TABLE_OFFSET - BOOTLOADER_OFFSET
    if data[0] == APP_MAGIC and data[table : table + 2] == b"\xaa\x50":
        return "firmware"
    if data[0] == APP_MAGIC:
        return "app"
    return "unknown"


def as_flash(data: bytes) -> bytes:
    """A firmware file as the flash sees it: shifted to its 0x1000 offset."""
    kind = classify(data)
    if kind == "firmware":
        return b"\xff" * BOOTLOADER_OFFSET + data
    if kind == "flash":
        return data
    raise ImageError(f"not a firmware or flash image (looks like: {kind})")


def read_otadata(flash: bytes, table: list[Partition]) -> list[OtaRecord] | None:
    ota = next((p for p in table if p.type == DATA_TYPE and p.subtype == SUBTYPE_OTA_DATA), None)
    if ota is None:
        return None
    sectors = [flash[ota.offset + i * 0x1000 : ota.offset + i * 0x1000 + 32] for i in (0, 1)]
    return [OtaRecord.parse(i, raw) for i, raw in enumerate(sectors) if len(raw) == 32]


def boot_choice(table: list[Partition], otadata: list[OtaRecord] | None) -> dict[str, object]:
    """Which slot ESP-IDF's bootloader selects, and why (before it loads the app)."""
    ota_apps = sorted((p for p in table if p.is_ota_app), key=lambda p: p.subtype)
    factory = next((p for p in table if p.type == APP_TYPE and p.subtype == SUBTYPE_FACTORY), None)
    fallback = factory.name if factory else (ota_apps[0].name if ota_apps else None)
    if otadata is None or not ota_apps:
        return {"slot": fallback, "reason": "no OTA data or no OTA app partitions: factory app"}
    if all(r.seq == 0xFFFFFFFF for r in otadata):
        return {"slot": fallback, "reason": "otadata is blank (never set): factory or first app"}
    valid = [r for r in otadata if r.valid]
    if not valid:
        return {"slot": fallback, "reason": "ota data partition invalid: no valid record"}
    active = max(valid, key=lambda r: r.seq)
    slot = ota_apps[(active.seq - 1) % len(ota_apps)].name
    reason = f"otadata sector {active.sector} has the highest valid seq ({active.seq})"
    if active.state == "PENDING_VERIFY":
        others = [r for r in valid if r is not active]
        if others:
            prev = max(others, key=lambda r: r.seq)
            back = ota_apps[(prev.seq - 1) % len(ota_apps)].name
        else:
            back = fallback
        return {
            "slot": back,
            "reason": f"{slot} is still PENDING_VERIFY (never confirmed): the bootloader marks "
            f"it ABORTED and rolls back to {back}",
        }
    if active.state == "NEW":
        reason += "; state NEW: it boots as PENDING_VERIFY until the app confirms it"
    return {"slot": slot, "reason": reason}


def report(path: Path) -> dict[str, object]:
    """Everything `harness inspect` says about one file, as JSON-ready data."""
    data = read_input(path)
    kind = classify(data)
    if kind == "unknown":
        raise ImageError(f"{path}: not an ESP32 image (no 0xE9 image header at 0 or 0x1000)")
    out: dict[str, object] = {
        "schema": SCHEMA_VERSION,
        "file": str(path),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "kind": kind,
        "summary": "",
        "chip": None,
        "flash_size": None,
        "partitions": None,
        "otadata": None,
        "boot": None,
        "app": None,
        "slots": None,
        "ota_payload": None,
    }
    if kind == "app":
        app = check_app(data)
        out.update(chip=app.chip, flash_size=app.flash_size, app=asdict(app))
        out["ota_payload"] = {"ok": app.ok, "verdict": _payload_verdict(kind, app)}
    elif kind in ("firmware", "flash"):
        flash = as_flash(data)
        boot = check_app(flash[BOOTLOADER_OFFSET:])
        table = parse_table(flash)
        otadata = read_otadata(flash, table)
        out.update(
            chip=boot.chip,
            flash_size=boot.flash_size,
            partitions=[asdict(p) for p in table],
            otadata=[asdict(r) for r in otadata] if otadata is not None else None,
            boot=boot_choice(table, otadata) if table else None,
            slots={
                # the bootloader reads an image's segments wherever they lead, even past
                # its slot's end, and only then compares the length with the slot
                p.name: _slot_summary(flash[p.offset :], p.size)
                for p in table
                if p.type == APP_TYPE and p.offset < len(flash)
            },
        )
        out["app"] = next((s for s in out["slots"].values() if s["kind"] == "app"), None)
        out["ota_payload"] = {"ok": False, "verdict": _payload_verdict(kind, boot)}
    else:
        out["ota_payload"] = {"ok": False, "verdict": f"not an app image ({kind})"}
    out["summary"] = _summary(out)
    return out


def _slot_summary(data: bytes, size: int) -> dict[str, object]:
    if data[:1] != bytes([APP_MAGIC]):
        state = "blank" if data[:4096].count(0xFF) == len(data[:4096]) else "no app image"
        return {"kind": state, "ok": False, "problems": [f"{state}: invalid magic byte"]}
    kind = "firmware" if classify(data[:size]) == "firmware" else "app"
    check = check_app(data, size)
    return {"kind": kind, **asdict(check)}


def _payload_verdict(kind: str, first: AppCheck) -> str:
    if kind == "app":
        if first.ok:
            return "app image: a correct OTA payload"
        return "app image the bootloader will reject: " + "; ".join(first.problems)
    seg0 = first.segments[0]["addr_hex"] if first.segments else "?"
    return (
        f"this is a {'whole flash' if kind == 'flash' else 'full firmware'} image "
        "(bootloader + partition table + app), not an app image: its first segment loads "
        f"at {seg0}, in the bootloader's own memory, so an OTA of it is rejected by the "
        "bootloader with 'overlaps bootloader data'. Use the app image instead "
        "(micropython.bin / .app-bin, or `mp-image-tool-esp32 FILE -x`)"
    )


def _summary(out: dict[str, object]) -> str:
    kind = out["kind"]
    if kind == "app":
        app = out["app"]
        what = f"app image for {app['chip']}, ESP-IDF {app['idf_version']}, built {app['built']}"
        return what + ("" if app["ok"] else f" — PROBLEMS: {'; '.join(app['problems'])}")
    if kind in ("firmware", "flash"):
        boot = out["boot"] or {}
        return (
            f"{'whole flash image' if kind == 'flash' else 'full firmware image'} "
            f"(bootloader + partition table + app) for {out['chip']}, "
            f"{out['flash_size']} flash; bootloader will pick {boot.get('slot')}"
        )
    return f"{kind}: not an ESP32 image"


def read_input(path: Path) -> bytes:
    """Read a user-given file, turning the usual mistakes into one-line errors."""
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


def render(rep: dict[str, object]) -> str:
    """The text form of `report()`, for people."""
    lines = [
        f"{rep['file']}: {rep['summary']}",
        f"  size {rep['size']} bytes, sha256 {rep['sha256']}",
    ]
    if rep["partitions"]:
        lines.append("  partition table:")
        for p in rep["partitions"]:
            lines.append(
                f"    {p['name']:<10} type {p['type']:#04x}/{p['subtype']:#04x} "
                f"at {p['offset']:#09x} size {p['size']:#09x}"
            )
    if rep["otadata"] is not None:
        lines.append("  otadata:")
        for r in rep["otadata"]:
            seq = "blank" if r["seq"] == 0xFFFFFFFF else r["seq"]
            crc = "crc ok" if r["crc_ok"] else "crc BAD"
            lines.append(f"    sector {r['sector']}: seq {seq}, {r['state']}, {crc}")
    if rep["boot"]:
        lines.append(f"  bootloader will pick: {rep['boot']['slot']} ({rep['boot']['reason']})")
    for name, slot in (rep["slots"] or {}).items():
        state = "ok" if slot["ok"] else "; ".join(slot["problems"])
        lines.append(f"  slot {name}: {slot['kind']}, {state}")
    app = rep["app"] if rep["kind"] == "app" else None
    if app:
        for seg in app["segments"]:
            lines.append(f"    segment at {seg['addr_hex']} length {seg['length']}")
        lines.append(
            f"    length {app['length']}, checksum {'ok' if app['checksum_ok'] else 'BAD'}"
            f", sha256 {'ok' if app['sha256_ok'] else 'BAD' if app['sha256_appended'] else 'none'}"
        )
    lines.append(f"  as an OTA payload: {rep['ota_payload']['verdict']}")
    return "\n".join(lines)
