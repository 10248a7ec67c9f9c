"""`harness otadata`: an otadata partition image that makes the bootloader pick a slot."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import HarnessError

if TYPE_CHECKING:
    from .options import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser("otadata", help="an otadata image that selects a slot (for esptool)")
    p.add_argument("image", type=Path, help="the firmware or flash image it is for")
    p.add_argument("--select", required=True, metavar="SLOT", help="e.g. ota_1")
    p.add_argument("--state", default="UNDEFINED", help="NEW, PENDING_VERIFY, VALID, ... "
                   "(default UNDEFINED, as set_boot() without rollback)")  # fmt: skip
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_otadata)


def cmd_otadata(args: argparse.Namespace) -> int:
    """An otadata partition image that makes the bootloader pick a slot (for esptool)."""
    from ...flash import formats
    from ...flash.inputs import read_input

    data = read_input(args.image)
    flash = formats.as_flash(data)
    table = formats.parse_table(flash)
    part = table.otadata
    records = formats.read_otadata(flash, table)
    if part is None or records is None:
        raise HarnessError(f"{args.image} has no otadata partition (an OTA layout is needed)")
    if args.output.exists() and args.output.resolve() == args.image.resolve():
        raise HarnessError(f"-o {args.output} would overwrite the input: choose another name")
    current = flash[part.offset : part.end].ljust(part.size, b"\xff")
    content = bytearray(current)
    for sector, sector_data in formats.otadata_selecting(table, records, args.select,
                                                         args.state).items():  # fmt: skip
        content[sector * formats.SECTOR : (sector + 1) * formats.SECTOR] = sector_data
    state = formats.FlashState.of(flash[: part.offset] + bytes(content) + flash[part.end :])
    args.output.write_bytes(bytes(content))
    print(f"{args.output}: otadata selecting {state.boot.slot} ({', '.join(state.states())})")
    print(f"  write it at {part.offset:#x}: esptool write-flash {part.offset:#x} {args.output}")
    return 0
