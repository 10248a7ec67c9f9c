"""Named image recipes: `images/recipes/NAME.yaml`, small files a user can copy and change.

A recipe says how a flash image is made from any firmware: the flash size, the
partition layout, the mp-image-tool-esp32 resize. Scenarios use the recipe named after
their cell's flash size (`4mb`, `16mb`; `4mb-ota`, `16mb-ota` when the scenario needs
OTA slots and the firmware has none), and `harness image build --recipe NAME` builds
any of them. A project's own `images/recipes/` (beside its `scenarios/`, or in the
working directory) is searched first, then the recipes shipped with the harness.
Files are validated like scenarios: every problem is one `file:line: ...` line.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .. import yamlfile
from ..errors import HarnessError
from . import images
from .size import EmulatedSize, FlashSize

Psram = Literal["auto", "on", "off"]


class RecipeFile(BaseModel):
    """One recipe file."""

    model_config = ConfigDict(extra="forbid")

    title: str  # what the image is, in a line
    flash_size: EmulatedSize
    layout: images.Layout = "keep"  # keep the firmware's table, or convert to OTA slots
    # mp-image-tool-esp32 --resize; a vfs entry applies only where the table has a vfs
    # line (up to v1.25); default vfs=0 when the size or the layout changes
    resize: str | None = None
    header_flash_size: EmulatedSize | None = None  # make the header claim another size (-f)
    psram: Psram = "auto"

    def recipe(self, firmware: Path, **extra: Any) -> images.Recipe:
        """The build input for one firmware file."""
        return images.Recipe(
            firmware,
            self.flash_size,
            layout=self.layout,
            resize=self.resize,
            header_size=self.header_flash_size,
            **extra,
        )


@dataclasses.dataclass(frozen=True)
class NamedRecipe:
    name: str
    path: Path | None  # None: made up for a size no file names (2MB, 8MB)
    spec: RecipeFile


def defaults_dir() -> Path:
    return Path(str(resources.files("harness.defaults") / "recipes"))


def search_path(*starts: Path) -> list[Path]:
    """Where recipes are looked for: each start's `images/recipes`, then the shipped ones."""
    found = [s / "images" / "recipes" for s in starts]
    return [*dict.fromkeys(p for p in found if p.is_dir()), defaults_dir()]


def load(path: Path) -> RecipeFile:
    spec, _, _ = yamlfile.load(path, RecipeFile, what="recipe")
    return spec


def find(name: str, search: list[Path]) -> NamedRecipe:
    """The recipe `name`, first in `search`; an unknown name lists the known ones."""
    for folder in search:
        path = folder / f"{name}.yaml"
        if path.is_file():
            return NamedRecipe(name, path, load(path))
    known = sorted({p.stem for folder in search for p in folder.glob("*.yaml")})
    raise HarnessError(f"no image recipe {name!r} (known: {', '.join(known)})")


def choose(search: list[Path], size: FlashSize, *, name: str | None = None,
           ota: bool = False) -> NamedRecipe:  # fmt: skip
    """The one rule for every image a firmware boots from (scenario cells, the `board`
    fixture, `harness boot` and `image build`): the recipe `name`d, else the one for the
    flash size and layout (`16mb`, `16mb-ota`)."""
    return find(name, search) if name else for_size(size, ota, search)


def for_size(size: FlashSize, ota: bool, search: list[Path]) -> NamedRecipe:
    """The recipe a scenario cell of this size uses (`16mb`, or `16mb-ota` for OTA slots)."""
    name = f"{str(size).lower()}{'-ota' if ota else ''}"
    try:
        return find(name, search)
    except HarnessError:
        base = RecipeFile(title=f"{size} flash", flash_size=size, layout="ota" if ota else "keep")
        return NamedRecipe(name, None, base)
