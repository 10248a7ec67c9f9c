"""Options more than one command takes, declared once: as parent parsers and helpers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...flash import images
from ...flash.size import FlashSize

if TYPE_CHECKING:
    from ...emulator.launch import Choices, Launch
    from ...flash.recipes import NamedRecipe

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

# --qemu: boot, run, provision, repro
QEMU = argparse.ArgumentParser(add_help=False)
QEMU.add_argument("--qemu", help="path to Espressif's QEMU (qemu-system-xtensa; default: "
                  "ESP_QEMU, ~/.espressif/tools/qemu-xtensa, then PATH)")  # fmt: skip

# --watchdogs: boot, run
WATCHDOGS = argparse.ArgumentParser(add_help=False)
WATCHDOGS.add_argument("--watchdogs", choices=["on", "off"], help="the emulated timer-group "
                       "watchdogs (default: off, as `idf.py qemu` runs; a scenario's own "
                       "`watchdogs:` wins)")  # fmt: skip

# the image a firmware boots from: boot, image build
RECIPE = argparse.ArgumentParser(add_help=False)
RECIPE.add_argument("--recipe", help="a named image recipe (images/recipes/NAME.yaml: 4mb, "
                    "16mb, 4mb-ota, 16mb-ota); the options below change it")  # fmt: skip
RECIPE.add_argument("--flash-size", help="2MB, 4MB, 8MB or 16MB (default: the firmware's own)")
RECIPE.add_argument(
    "--layout",
    choices=images.LAYOUTS,
    help="keep the firmware's partition table, or convert it to two OTA slots",
)
RECIPE.add_argument("--resize", help="mp-image-tool-esp32 --resize (default vfs=0 when growing)")
RECIPE.add_argument("--app", type=Path, help="app image to write into the first app slot")
RECIPE.add_argument(
    "--vfs",
    action="append",
    default=[],
    metavar="SRC[:DEST]",
    help="file or folder to put into MicroPython's filesystem (repeatable)",
)


def choices(args: argparse.Namespace, **policy: Any) -> Choices:
    """The RECIPE options as launch choices (harness.emulator.launch); `policy`: the
    command's own (watchdogs, psram, alone)."""
    from ...emulator.launch import Choices

    size = FlashSize.emulated(args.flash_size) if args.flash_size else None
    return Choices(args.recipe, size, args.layout == "ota", **policy)


def recipe_changes(args: argparse.Namespace) -> dict[str, Any]:
    """What the RECIPE options change in the recipe they chose: files, app, and the
    size, layout and resize said on top of a named recipe."""
    vfs = []
    for item in args.vfs:
        src, _, dst = item.partition(":")
        vfs.append((Path(src), dst or "/" + Path(src).name))
    changes: dict[str, Any] = {"app": args.app, "vfs_files": tuple(vfs)}
    if args.flash_size:
        changes["flash_size"] = FlashSize.emulated(args.flash_size)
    if args.layout:
        changes["layout"] = args.layout
    if args.resize:
        changes["resize"] = args.resize
    return changes


def untouched(args: argparse.Namespace) -> bool:
    """No RECIPE option given: a whole flash image boots as it is."""
    return not (args.recipe or args.flash_size or args.layout or args.resize or args.app
                or args.vfs)  # fmt: skip


def named_recipe(args: argparse.Namespace, firmware: Path) -> NamedRecipe:
    """The recipe the RECIPE options choose for `firmware`, by the one rule."""
    from ...emulator.launch import find_recipe

    return find_recipe(firmware, choices(args), search())


def search() -> list[Path]:
    """Where a command's recipes are looked for: the working directory's, then the shipped."""
    from ...flash import recipes

    return recipes.search_path(Path.cwd())


def image_for(args: argparse.Namespace, ready: Launch) -> Path:
    """A whole flash image boots as it is; anything else is built from the recipe."""
    from ...flash import formats
    from ...flash.inputs import read_input

    if untouched(args) and formats.classify(read_input(ready.firmware)) == "flash":
        FlashSize.emulated(ready.firmware.stat().st_size)  # QEMU refuses other sizes: say so
        return ready.firmware
    return ready.build(**recipe_changes(args))
