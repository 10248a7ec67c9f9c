"""`harness schema`: the scenario format's JSON Schema, or its step reference."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .options import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser("schema", help="print the scenario file JSON Schema")
    p.add_argument(
        "--steps",
        action="store_true",
        help="the step reference (markdown) instead, as docs/scenarios.md has it",
    )
    p.set_defaults(func=cmd_schema)


def cmd_schema(args: argparse.Namespace) -> int:
    from ...scenario import format, reference

    if args.steps:
        print(reference.steps_markdown())
    else:
        print(json.dumps(format.json_schema(), indent=2))
    return 0
