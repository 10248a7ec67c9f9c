"""`harness powercut export`: the flash a power cut left, to try on a real board."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import HarnessError

if TYPE_CHECKING:
    from .options import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser("powercut", help="a power cut's recording: export the flash of a point")
    group = p.add_subparsers(dest="powercut_command", required=True)
    e = group.add_parser("export", help="the flash as a cut left it, for esptool write-flash 0")
    e.add_argument("artifacts", type=Path, help="the cell's artifacts folder (or one holding "
                   "a single cell with a power cut)")  # fmt: skip
    e.add_argument("--point", type=int, required=True, metavar="N",
                   help="flash operations done before the power went (0: none; as the "
                   "report's point column, `N/TOTAL`); -K: the torn state inside operation "
                   "K (`torn: true`)")  # fmt: skip
    e.add_argument("--step", type=int, metavar="S", help="the power_cut step's number, for a "
                   "cell with several")  # fmt: skip
    e.add_argument("-o", "--output", type=Path, required=True, metavar="STATE.bin")
    e.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Rebuild the point's flash from the kept recording; say how to flash it."""
    from ...scenario import cutfile

    cell, path = cutfile.find(args.artifacts, args.step)
    cut = cutfile.load(path)
    flash = cut.flash(args.point)
    if args.output.is_dir():
        raise HarnessError(f"-o {args.output} is a folder: name the file to write")
    args.output.write_bytes(flash)
    where = (f"after {args.point}" if args.point >= 0
             else f"torn inside operation {-args.point}")  # fmt: skip
    print(f"{args.output}: the flash of {cell.name} {where} of {len(cut.ops)} "
          f"flash operations of step {cut.step} ({len(flash) // 1024 // 1024}MB)")  # fmt: skip
    ran = next((o for o in cell.faults if o.step == cut.step and o.point.key == args.point), None)
    if ran is not None:
        verdict = f"; verdict: {ran.verdict.line()}" if ran.verdict else ""
        print(f"  the run powered on from it: {ran.status}, booted {ran.booted or '-'}{verdict}")
    else:
        print("  the run did not power on from this point (its sweep chose others)")
    print(f"  on a real board: {cutfile.esptool_command(flash, args.output)}")
    return 0
