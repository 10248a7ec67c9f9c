"""`harness report`: the results in an artifacts folder, as markdown or the HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import HarnessError

if TYPE_CHECKING:
    from .options import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="the results in an artifacts folder: a markdown "
                       "table, or (--html) the HTML report")  # fmt: skip
    p.add_argument("artifacts", type=Path, help="an artifacts folder (merged ones too)")
    p.add_argument("--html", type=Path, metavar="OUT.html",
                   help="write the HTML report of every cell in it here")  # fmt: skip
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from .. import report

    if not args.artifacts.is_dir():
        raise HarnessError(f"{args.artifacts}: no such folder")
    if args.html:
        print(f"report: {html_report(args.artifacts, out=args.html)}")
        return 0
    print(report.markdown(args.artifacts))
    return 0


def html_report(artifacts: Path, cells: list[Path] | None = None, out: Path | None = None) -> Path:
    """The run's HTML page (harness.frontends.html)."""
    from ..html import write_report

    return write_report(artifacts, out, cells=cells)
