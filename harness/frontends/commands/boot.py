"""`harness boot`: a firmware on the emulated board (the session itself: harness.frontends.boot)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from . import options

if TYPE_CHECKING:
    from .options import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser("boot", help="boot a firmware or flash image in QEMU",
                       parents=[options.RECIPE, options.QEMU, options.WATCHDOGS])  # fmt: skip
    p.add_argument("image", type=Path, help="firmware .bin or whole flash image")
    p.add_argument("--exec", help="run this code at the REPL, print its output, exit")
    p.add_argument("--psram", choices=["auto", "on", "off"], default="auto",
                   help="give the machine 4MB PSRAM (auto: when it is a SPIRAM build)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for boot and --exec")
    p.add_argument("--pty", action="store_true", help="serve the UART as a pty and an RFC2217 "
                   "port for your own tools until Ctrl-C")  # fmt: skip
    p.add_argument("--download", action="store_true",
                   help="with --pty: start in download mode (GPIO0 low)")  # fmt: skip
    p.add_argument("--artifacts", type=Path, help="keep serial log, QEMU command line, flash")
    p.set_defaults(func=cmd_boot)


def cmd_boot(args: argparse.Namespace) -> int:
    """Refuse what cannot run before anything is built, then boot by the one path."""
    from ...emulator import launch, policy
    from .. import boot

    boot.check(args)
    ready = launch.prepare(args.image, options.choices(
        args, watchdogs=policy.on_off(args.watchdogs), psram=policy.auto(args.psram),
        alone=bool(args.pty),
    ), options.search())  # fmt: skip
    return boot.run(args, ready, options.image_for(args, ready))
