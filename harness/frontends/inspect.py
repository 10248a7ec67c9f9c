"""`harness inspect`'s text form: a FileReport (harness.flash.inspect) for people."""

from __future__ import annotations

from ..flash import formats
from ..flash.inspect import FileReport


def render(rep: FileReport) -> str:
    """The text form, for people."""
    lines = [f"{rep.file}: {rep.summary}", f"  size {rep.size} bytes, sha256 {rep.sha256}"]
    if rep.table is not None and len(rep.table):
        lines.append("  partition table:")
        for p in rep.table:
            lines.append(
                f"    {p.name:<10} type {p.type:#04x}/{p.subtype:#04x} "
                f"at {p.offset:#09x} size {p.size:#09x}"
            )
    if rep.filesystem is not None:
        fs = rep.filesystem
        where = (
            "in the table"
            if fs.in_table
            else (
                "not in the table: MicroPython makes it at boot after the last partition, up to "
                f"the end of a {(rep.filesystem_flash_size or 0) >> 20}MB flash"
            )
        )
        lines.append(f"  filesystem: {fs.label} at {fs.offset:#09x} size {fs.size:#09x} ({where})")
    if rep.otadata is not None:
        lines.append("  otadata:")
        for r in rep.otadata:
            seq = "blank" if r.seq == formats.BLANK_SEQ else r.seq
            lines.append(f"    sector {r.sector}: seq {seq}, {r.state}, "
                         f"crc {'ok' if r.crc_ok else 'BAD'}")  # fmt: skip
    if rep.boot:
        lines.append(f"  bootloader will pick: {rep.boot.slot} ({rep.boot.reason})")
    for name, slot in rep.slots.items():
        state = "ok" if slot.check.ok else "; ".join(slot.check.problems)
        lines.append(f"  slot {name}: {slot.kind}, {state}")
    if rep.kind == "app" and rep.app is not None:
        app = rep.app
        for seg in app.segments:
            lines.append(f"    segment at {seg.addr_hex} length {seg.length}")
        sha = "ok" if app.sha256_ok else "BAD" if app.sha256_appended else "none"
        lines.append(
            f"    length {app.length}, checksum {'ok' if app.checksum_ok else 'BAD'}, sha256 {sha}"
        )
    lines.append(f"  as an OTA payload: {rep.ota_payload.verdict}")
    return "\n".join(lines)
