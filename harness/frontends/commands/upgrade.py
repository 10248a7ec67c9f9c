"""`harness upgrade`: release A's board, release B's app by OTA; one answer per question
(the run and its judgment: harness.frontends.upgrade)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ...flash.size import FlashSize
from . import options

if TYPE_CHECKING:
    from .options import Subparsers

QUESTIONS = ("boots", "slot", "files", "confirms", "rollback", "downgrade")


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "upgrade", parents=[options.QEMU],
        help="will a board flashed with release A take release B's app by OTA?",
    )  # fmt: skip
    p.add_argument("--from", dest="source", required=True, metavar="FILE|BOARD@VERSION",
                   help="the release the board was first flashed with (firmware .bin)")  # fmt: skip
    p.add_argument("--to", dest="target", required=True, metavar="FILE|BOARD@VERSION",
                   help="the release to send: a firmware .bin (its app is sent), or an app "
                   "image")  # fmt: skip
    p.add_argument("--flash-size", help="e.g. 16MB (default: A's own)")
    p.add_argument("--files", type=Path, help="a folder of your files, written by A onto its "
                   "filesystem (default: a small app that writes at every boot)")  # fmt: skip
    p.add_argument("--device-lib", type=Path, help="your OTA library folder (-> /lib)")
    p.add_argument("--command", help="the REPL line that runs your OTA library; the update "
                   "is /fw.bin in the filesystem")  # fmt: skip
    p.add_argument("--require", action="append", default=[], choices=QUESTIONS,
                   help="exit 1 unless this is answered yes (repeatable)")  # fmt: skip
    p.add_argument("--retries", type=int, default=1,
                   help="rerun when the emulator failed the run (a stalled guest, QEMU's "
                   "crash); builds that stall get 3 or more")  # fmt: skip
    p.add_argument("--firmware-dir", type=Path, help="where BOARD@VERSION files are looked for "
                   "first (default: HARNESS_FIRMWARE_DIR)")  # fmt: skip
    p.add_argument("--save", type=Path, help="write the run as a scenario file")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.set_defaults(func=cmd_upgrade)
    p.epilog = ("answers: boots B, from which slot, files kept, confirms, rollback protected, "
                "downgrade safe. exit 0: answered; 1: a --require'd answer is not yes; 2: "
                "could not run")  # fmt: skip


def cmd_upgrade(args: argparse.Namespace) -> int:
    from ...emulator.qemu import find_qemu
    from ...sources import manifest
    from .. import upgrade

    request = upgrade.Request(
        args.source, args.target,
        FlashSize.emulated(args.flash_size) if args.flash_size else None,
        args.files, args.device_lib, args.command, tuple(args.require), args.retries,
    )  # fmt: skip
    selector = manifest.selector(args.firmware_dir)
    upgrade.check(request, selector, args.save)  # bad input: one line, before QEMU is looked for
    find_qemu(args.qemu)
    verdict = upgrade.run(request, args.save, args.artifacts, selector, args.qemu)
    print(verdict.text)
    return verdict.exit_code
