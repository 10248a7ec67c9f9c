"""`harness inspect`: what a file is and what will boot (its text: harness.frontends.inspect)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .options import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser("inspect", help="say what an image file is and what will boot")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="the stable JSON form")
    p.add_argument("--html", type=Path, metavar="OUT.html",
                   help="also draw it: its partition map and where it would load")  # fmt: skip
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from ...flash.inspect import examine
    from ..inspect import render

    rep = examine(args.file)
    if args.json:
        print(json.dumps(rep.to_json(), indent=2))
    else:
        print(render(rep))
    if args.html:
        from ..html import write_inspect

        print(f"html: {write_inspect(args.file, args.html)}")
    return 0
