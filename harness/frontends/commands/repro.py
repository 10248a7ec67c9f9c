"""`harness repro`: a bug report's two files in, a verdict and a scenario out
(the reproduction itself: harness.frontends.repro)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ...errors import HarnessError
from ...flash.size import FlashSize
from . import options

if TYPE_CHECKING:
    from .options import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser("repro", help="reproduce a bug report: their firmware, their update",
                       parents=[options.QEMU])  # fmt: skip
    p.add_argument("--firmware", type=Path, required=True, help="the firmware on the device")
    p.add_argument("--update", type=Path, required=True, help="the file sent by OTA")
    p.add_argument("--flash-size", help="e.g. 16MB (converted with -f 16M --resize vfs=0)")
    p.add_argument("--layout", choices=["keep", "ota"],
                   help="default: keep, or OTA slots when the firmware has none")  # fmt: skip
    p.add_argument("--method", choices=["staged", "harness"], default="staged",
                   help="without --command: how the update gets into the slot; staged "
                   "(default): written into the flash file before the boot, the device "
                   "runs set_boot() and reboots; harness: the device writes it")  # fmt: skip
    p.add_argument("--command", help="their REPL line; the update is /fw.bin in the vfs, or "
                   "${url} with --url")  # fmt: skip
    p.add_argument("--url", action="store_true",
                   help="serve the update over HTTP: the board joins the Wi-Fi QEMU's "
                   "access point and --command downloads ${url} (ESP-IDF 5.0 builds: "
                   "v1.21-v1.23)")  # fmt: skip
    p.add_argument("--device-lib", type=Path, help="their device library folder (-> /lib)")
    p.add_argument("--expect", action="append", default=[], help="text that shows the bug")
    p.add_argument("--power-cut", metavar="all|sweep:N",
                   help="cut the power in every distinct flash state of the update's "
                        "writes (all: a power-on per class of states that power-on cannot "
                        "tell apart), or at N points of them (the device writes it); "
                        "verdict: survives every cut, or the first that bricks")  # fmt: skip
    p.add_argument("--save", type=Path, help="write the reproduction as a scenario file")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.set_defaults(func=cmd_repro)
    p.epilog = (
        "exit 0: reproduced (or ran, without --expect); 1: not reproduced; 2: could not run. "
        "With --power-cut: 0 survives every cut; 1 a cut point failed; 2 could not run"
    )


def cmd_repro(args: argparse.Namespace) -> int:
    from ...emulator.qemu import find_qemu
    from .. import repro

    request = repro.Request(
        args.firmware, args.update, FlashSize.emulated(args.flash_size) if args.flash_size
        else None, args.layout, args.command, args.device_lib, tuple(args.expect), args.method,
        power_cut=_sweep_points(args.power_cut) if args.power_cut else None, url=args.url,
    )  # fmt: skip
    repro.check(request, args.save)
    find_qemu(args.qemu)
    result = repro.run(request, args.save, args.artifacts, args.qemu)
    print(result.text)
    return result.exit_code


def _sweep_points(text: str) -> int | Literal["all"]:
    """`all` (every distinct state), or `sweep:20` (or `20`): how many cut points to
    spread over the update."""
    value = text.removeprefix("sweep:")
    if value == "all":
        return "all"
    if not value.isdigit() or int(value) < 1:
        raise HarnessError(f"--power-cut {text}: give all (every distinct flash state) or "
                           "sweep:N, N cut points (e.g. sweep:20)")  # fmt: skip
    return int(value)
