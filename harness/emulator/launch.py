"""One path from a firmware and a recipe to a booted board: `prepare()`, then `build()`.

`prepare()` reads the firmware's facts once, finds the recipe of its image by the one
rule (harness.flash.recipes.choose: the recipe named, else the one for the flash size
and layout) and decides the run policy (harness.emulator.policy, which refuses a chip
that cannot boot, in one line, before anything is built). `Launch.build()` makes the
image; `device.boot(image, BootOptions(launch.policy, ...))` powers it on. The scenario
plan (whose runner builds and boots the cell), the pytest plugin's `board` fixture and
`harness boot` all come through here, so a firmware boots the same way whoever asks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import QemuNotFound
from ..flash import images, recipes
from ..flash.firmware import FirmwareFacts
from ..flash.size import FlashSize
from . import policy
from .policy import RunPolicy
from .qemu import find_wifi_qemu


@dataclass(frozen=True)
class Choices:
    """What the caller chose; None leaves it to the rules (the recipe's, the policy's)."""

    recipe: str | None = None  # a named recipe (images/recipes/NAME.yaml)
    flash_size: FlashSize | None = None  # default: the firmware's own
    ota: bool = False  # the recipe with two OTA slots for that size
    watchdogs: bool | None = None
    psram: bool | None = None  # default: as the recipe says, else as the firmware needs
    alone: bool = False  # the host to itself (a step or a served port needs it)
    retries: int = 0
    network: bool = False  # Wi-Fi (the chip's Wi-Fi QEMU; why_no_network says whether)


@dataclass(frozen=True)
class Launch:
    """A firmware ready to boot: its facts, its image's recipe and how it runs."""

    firmware: Path
    facts: FirmwareFacts
    recipe: recipes.NamedRecipe
    policy: RunPolicy

    def image_recipe(self, **changes: Any) -> images.Recipe:
        """The build input for this firmware: the recipe, with `changes` (files, app, ...)."""
        return self.recipe.spec.recipe(self.firmware).replace(**changes)

    def build(self, **changes: Any) -> Path:
        """The flash image (cached by content) of `image_recipe(**changes)`."""
        return images.build(self.image_recipe(**changes))


def find_recipe(firmware: Path, choices: Choices, search: list[Path]) -> recipes.NamedRecipe:
    """The recipe of the firmware's image: the one named, else the one for the flash size
    (chosen, or the firmware's own) and layout (harness.flash.recipes.choose)."""
    size = choices.flash_size or FirmwareFacts.read(firmware).header_flash_size
    return recipes.choose(search, size, name=choices.recipe, ota=choices.ota)


def prepare(firmware: Path, choices: Choices, search: list[Path]) -> Launch:
    """The firmware's facts, its recipe and its run policy, decided before anything runs."""
    facts = FirmwareFacts.read(firmware)
    named = find_recipe(firmware, choices, search)
    psram = choices.psram if choices.psram is not None else policy.auto(named.spec.psram)
    wifi = facts.chip.wifi
    if choices.network and psram is None and wifi is not None and not wifi.psram:
        psram = False  # the Wi-Fi model and the guest's PSRAM do not mix (harness.chips.Wifi)
    decided = policy.decide(facts, watchdogs=choices.watchdogs, psram=psram,
                            alone=choices.alone, retries=choices.retries)  # fmt: skip
    return Launch(firmware, facts, named, dataclasses.replace(decided, network=choices.network))


def why_no_network(facts: FirmwareFacts, qemu: str | Path | None = None) -> str:
    """Why a firmware gets no network here, in one line ("" when it does): its chip's
    Wi-Fi QEMU (harness.chips.Wifi) must serve the release's ESP-IDF, read from its app
    description, and be found, probed for the model (harness.emulator.qemu)."""
    wifi = facts.chip.wifi
    if wifi is None:
        return f"no QEMU emulates the Wi-Fi of {facts.chip.name}"
    reason = wifi.why_not(facts.version or facts.name, facts.idf_version)
    if reason:
        return reason
    try:
        find_wifi_qemu(qemu, facts.chip)
    except QemuNotFound as exc:
        return str(exc)
    return ""
