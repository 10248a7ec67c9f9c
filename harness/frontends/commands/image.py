"""`harness image build`: a flash image of an exact size, by the recipe rule every boot uses."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import HarnessError
from . import options

if TYPE_CHECKING:
    from .options import Subparsers


def register(sub: Subparsers) -> None:
    image = sub.add_parser("image", help="flash images").add_subparsers(
        dest="action", required=True
    )
    build = image.add_parser("build", help="build a flash image of an exact size",
                             parents=[options.RECIPE])  # fmt: skip
    build.add_argument("firmware", type=Path)
    build.add_argument("-o", "--output", type=Path, required=True)
    build.set_defaults(func=cmd_image_build)


def cmd_image_build(args: argparse.Namespace) -> int:
    from ...flash import images
    from ...flash.size import FlashSize

    named = options.named_recipe(args, args.firmware)
    recipe = named.spec.recipe(args.firmware).replace(**options.recipe_changes(args))
    out: Path = args.output
    if out.resolve() in {args.firmware.resolve(), *(p.resolve() for p in [args.app] if p)}:
        raise HarnessError(f"-o {out} would overwrite an input file: choose another name")
    built = images.build_image(recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(built.path.read_bytes())
    size = FlashSize.parse(out.stat().st_size)
    print(f"{out}: {size} flash image ({recipe.layout} layout) from {args.firmware.name}")
    print(f"  conversion: {built.conversion}")
    for note in built.notes:
        print(f"  note: {note}")
    if built.filesystem is not None:
        fs = built.filesystem
        how = "in the table" if fs.in_table else "made by MicroPython at boot"
        print(f"  filesystem: {fs.label} at {fs.offset:#x}, {fs.size:#x} bytes ({how})")
    return 0
