"""Scenario files: what a YAML file may say, checked before anything boots.

A scenario names the failure it reproduces and where it was reported, the images it
runs on (a matrix of flash sizes x firmware, optionally x PSRAM), and ordered steps
(harness.steps). `load()` validates a file and turns any problem into one line,
`file:line: what is wrong`. `Scenario.cells()` expands the matrix into `Cell`s, one
per test item, choosing firmware by the one rule of harness.firmware.

Variables: `${firmware}` (this cell's firmware file), `${firmware_dir}`,
`${flash_size}`, `${scenario_dir}`, and any defined under `vars:`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from . import recipes, yamlfile
from .errors import HarnessError
from .firmware import FirmwareFacts, read_firmware
from .manifest import ENTRY_ID, Firmware, FirmwareSelector, FirmwareUnavailable
from .steps import STEPS, Args

VARIABLE = re.compile(r"\$\{([^}]*)\}")
# known once the cell runs: the served port, the run's folder and files, payload files
RUNTIME_VARS = ("port", "rfc2217", "run_dir", "image", "python", "payload_full_image",
                "payload_app", "payload_truncated_app", "payload_corrupt_app")  # fmt: skip
BUILTIN_VARS = ("firmware", "firmware_dir", "flash_size", "scenario_dir", *RUNTIME_VARS)
# ${offset_ota_1}, ${offset_otadata}, ...: where a partition of the cell's image starts
# (hex), so host commands find the slot on every layout, converted or not
PARTITION_VAR = re.compile(r"offset_(\w+)")
# ota: two OTA slots (made by the OTA recipe where the firmware has none); spiram: a
# SPIRAM build; rollback: app rollback (v1.21.0 on); vfs-in-table / vfs-at-boot: the
# filesystem named in the partition table (up to v1.25) / made at boot after the last
# partition, with the flash chip's size queried at start-up (v1.26 on)
Need = Literal["ota", "spiram", "rollback", "vfs-in-table", "vfs-at-boot"]
ScenarioError = yamlfile.FileFormatError


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _step_model(kind: str, args: type[Args]) -> type[BaseModel]:
    config = ConfigDict(extra="forbid", title=kind)
    return type(kind, (BaseModel,), {"__annotations__": {kind: args}, "model_config": config})


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    return None


if TYPE_CHECKING:
    Step = BaseModel
else:  # one member per registered step, so the schema and the errors name every step
    Step = Annotated[
        Union[tuple(Annotated[_step_model(k, t.args), Tag(k)] for k, t in STEPS.items())],  # noqa: UP007
        Discriminator(_step_kind),
    ]


def step_kind(step: BaseModel) -> tuple[str, Args]:
    """(name, args) of a validated step."""
    kind = next(iter(type(step).model_fields))
    return kind, getattr(step, kind)


class ImageSpec(BaseModel):
    """How each cell's flash image differs from its size's recipe (images/recipes/)."""

    model_config = ConfigDict(extra="forbid")

    layout: Literal["keep", "ota"] | None = None  # None: the recipe's
    resize: str | None = None
    header_flash_size: str | None = None  # what the bootloader header claims (-f)
    vfs: dict[str, str] = Field(default_factory=dict)  # device path -> host path
    # partition -> payload kind or file, written at its offset like `esptool write_flash`
    flash: dict[str, str] = Field(default_factory=dict)
    psram: recipes.Psram | None = None

    _size = field_validator("header_flash_size")(
        classmethod(lambda cls, v: recipes.check_size(v) if v is not None else None)
    )


class Matrix(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flash_size: list[str] = Field(min_length=1)
    # manifest entries (ESP32_GENERIC-OTA@v1.25.0), file paths or globs; variables allowed
    firmware: list[str] = Field(min_length=1)
    psram: list[bool] | None = None

    @field_validator("flash_size", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        return [recipes.check_size(s) for s in _listify(value) or []]

    _firmware = field_validator("firmware", mode="before")(_listify)


class Scenario(BaseModel):
    """One scenario file."""

    model_config = ConfigDict(extra="forbid")

    title: str  # what it reproduces, in a line
    source: str  # link to the report, or where the case comes from
    notes: str | None = None  # where the real bootloader's wording differs from the report
    requires: list[Need] = Field(default_factory=list)
    vars: dict[str, str] = Field(default_factory=dict)
    matrix: Matrix
    image: ImageSpec = Field(default_factory=ImageSpec)
    # the emulated timer-group watchdogs: on (as on a board), off (as `idf.py qemu` runs),
    # or unset: the run's setting (--watchdogs), else harness.qemu.WATCHDOGS
    watchdogs: Literal["on", "off"] | None = None

    @field_validator("watchdogs", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        """YAML reads a bare on/off as true/false."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    steps: list[Step] = Field(min_length=1)

    # set by load(), not by the file
    path: Path = Field(default=Path("."), exclude=True)
    lines: dict[tuple[Any, ...], int] = Field(default_factory=dict, exclude=True)

    @property
    def name(self) -> str:
        return self.path.stem

    def step_line(self, index: int) -> int:
        return self.lines.get(("steps", index), 0)

    def cost(self) -> int:
        """A rough cost in boots, for scheduling: each step's own estimate."""
        return sum(STEPS[step_kind(s)[0]].cost(step_kind(s)[1]) for s in self.steps)

    def needs(self) -> set[str]:
        """What the scenario asks of firmware and image: declared, and its steps' needs."""
        derived = {need for s in self.steps for need in STEPS[step_kind(s)[0]].needs}
        return {*self.requires, *derived}

    def cells(
        self,
        selector: FirmwareSelector,
        *,
        flash_sizes: list[str] | None = None,
        firmware: list[str] | None = None,
    ) -> list[Cell]:
        """One Cell per matrix combination; options narrow sizes or replace firmware."""
        sizes = self.matrix.flash_size
        if flash_sizes:
            wanted = [recipes.check_size(s) for s in flash_sizes]
            sizes = [s for s in sizes if s in wanted]
        context = self._context(selector.folder)
        chosen: list[tuple[str, Firmware | None, str]] = []
        for i, spec in enumerate(firmware or self.matrix.firmware):
            where = ("matrix", "firmware", i) if not firmware else None
            expanded = self._expand(spec, context, where)
            try:
                found = selector.resolve(expanded)
            except FirmwareUnavailable as exc:
                named = ENTRY_ID.match(expanded)
                chosen.append((named["version"] if named else expanded, None, str(exc)))
                continue
            if not found:
                chosen.append((expanded, None, f"no firmware file matches {expanded}"))
            chosen += [(f.id, f, "") for f in found]
        if len({fid for fid, _, _ in chosen}) < len(chosen):  # same version twice: use names
            chosen = [(_long_id(f) if f else fid, f, why) for fid, f, why in chosen]
        psram_axis: list[bool | None] = list(self.matrix.psram) if self.matrix.psram else [None]
        return [
            Cell(self, size, fid, fw, why, psram, context)
            for size, (fid, fw, why), psram in itertools.product(sizes, chosen, psram_axis)
        ]

    def _context(self, firmware_dir: Path) -> dict[str, str]:
        # host paths are absolute: `run` commands execute in the run folder, not here
        context = {"firmware_dir": str(firmware_dir.resolve()),
                   "scenario_dir": str(self.path.parent.resolve())}  # fmt: skip
        for key, value in self.vars.items():
            context[key] = self._expand(value, context, ("vars", key))
        return context

    def _expand(self, text: str, context: dict[str, str], where: tuple[Any, ...] | None) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in context:
                raise ScenarioError(self.unknown_var(name, where))
            return context[name]

        return VARIABLE.sub(value, text)

    def unknown_var(self, name: str, where: tuple[Any, ...] | None) -> str:
        line = self.lines.get(where, 0) if where else 0
        part = PARTITION_VAR.fullmatch(name)
        if part:
            return f"{self.path}:{line}: ${{{name}}}: the image has no partition {part.group(1)}"
        known = ", ".join(sorted({*BUILTIN_VARS, *self.vars, "offset_PARTITION"}))
        return f"{self.path}:{line}: unknown variable ${{{name}}} (known: {known})"


def _long_id(fw: Firmware) -> str:
    return f"{fw.entry.name}-{fw.entry.version}" if fw.entry else fw.path.stem


@dataclass
class Cell:
    """One matrix combination of one scenario: one test item."""

    scenario: Scenario
    flash_size: str  # '16MB'
    firmware_id: str  # 'v1.25.0'
    firmware: Firmware | None  # None: it cannot be had (`missing` says why)
    missing: str = ""
    psram: bool | None = None
    context: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        parts = [self.flash_size.lower(), self.firmware_id]
        if self.psram is not None:
            parts.append("psram" if self.psram else "no-psram")
        return "-".join(parts)

    @property
    def name(self) -> str:
        return f"{self.scenario.name}[{self.id}]"

    def expand(
        self, text: str, where: tuple[Any, ...] | None = None, runtime: dict[str, str] | None = None
    ) -> str:
        """Substitute ${variables} for this cell; `runtime` has the run's own (${port}, ...),
        which stay as they are until the cell runs."""
        context = dict(self.context)
        context.update(firmware=str(self.firmware.path if self.firmware else ""),
                       flash_size=self.flash_size)  # fmt: skip
        if runtime is None:  # the run's own stay as they are until the cell runs
            parts = [n for n in VARIABLE.findall(text) if PARTITION_VAR.fullmatch(n)]
            runtime = {name: f"${{{name}}}" for name in [*RUNTIME_VARS, *parts]}
        context.update(runtime)
        return self.scenario._expand(text, context, where)

    def facts(self) -> FirmwareFacts:
        assert self.firmware is not None
        return FirmwareFacts.of(read_firmware(self.firmware.path))

    def needs_ota_layout(self) -> bool:
        """OTA slots asked for and not in the firmware: the cell uses the OTA recipe."""
        layout = self.scenario.image.layout
        return layout == "ota" or ("ota" in self.scenario.needs() and layout is None
                                   and not self.facts().ota_slots)  # fmt: skip

    def skip_reason(self) -> str | None:
        """Why this cell cannot run here (firmware missing, or without what it needs)."""
        if self.firmware is None:
            return (
                f"{self.missing}: set FIRMWARE_DIR (--firmware-dir) or --firmware, or "
                "fetch it (`harness firmware fetch`)"
                if self.missing.startswith("no firmware file")
                else self.missing
            )
        facts = self.facts()
        name, release = self.firmware.path.name, facts.version or "this release"
        needs = self.scenario.needs()
        if "spiram" in needs and not facts.spiram:
            return f"needs a SPIRAM build; {name} is not one"
        if "rollback" in needs and not facts.rollback:
            return (
                f"needs app rollback, which every MicroPython ESP32 build has from v1.21.0 "
                f"(CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE); {name} is {release}"
            )
        if "vfs-in-table" in needs and not facts.fs_in_table:
            return (
                f"needs a partition table that names the filesystem (releases up to v1.25); "
                f"{release} has no vfs line: MicroPython makes the filesystem at boot after "
                "the last partition"
            )
        if "vfs-at-boot" in needs and facts.fs_in_table:
            return (
                f"needs a release that makes its filesystem at boot after the last partition "
                f"(v1.26 on); {release} names vfs in its partition table"
            )
        return None


# -- loading ------------------------------------------------------------------------


def _message(error: dict[str, Any]) -> str | None:
    if error["type"] == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag", "?")
        return f"unknown step {tag!r}; known steps: {', '.join(STEPS)}"
    if error["type"] == "union_tag_not_found":
        return "a step is a mapping with one key, the step's name (e.g. `- boot: prompt`)"
    return None


def load(path: Path) -> Scenario:
    """Read and validate a scenario file; every problem is a ScenarioError `file:line: ...`."""
    scenario, lines, data = yamlfile.load(path, Scenario, what="scenario", message=_message)
    scenario.path, scenario.lines = path, lines
    _check_order(scenario)
    _check_variables(scenario, data)
    _check_watchdogs(scenario)
    return scenario


def _check_watchdogs(scenario: Scenario) -> None:
    """A scenario that waits for a watchdog reset must not run with the watchdogs off."""
    if scenario.watchdogs == "on":
        return
    for i, item in enumerate(scenario.steps):
        kind, args = step_kind(item)
        patterns = getattr(args, "pattern", None) or []
        if kind == "expect" and any("WDT" in p for p in patterns):
            raise ScenarioError(
                f"{scenario.path}:{scenario.step_line(i)}: steps.{i}: expects a watchdog "
                "reset: set `watchdogs: on` (the run may turn them off otherwise)"
            )


def _check_order(scenario: Scenario) -> None:
    """Exactly one boot, and device steps only after it."""
    kinds = [step_kind(s)[0] for s in scenario.steps]
    boots = [i for i, k in enumerate(kinds) if k == "boot"]
    if len(boots) != 1:
        line = scenario.step_line(boots[1]) if len(boots) > 1 else scenario.lines[("steps",)]
        raise ScenarioError(
            f"{scenario.path}:{line}: steps: need exactly one `boot` step "
            "(use `reset` to boot again)"
        )
    for i, kind in enumerate(kinds[: boots[0]]):
        if STEPS[kind].device:
            raise ScenarioError(
                f"{scenario.path}:{scenario.step_line(i)}: steps.{i}: `{kind}` needs a "
                "running device: put it after the `boot` step"
            )


def _check_variables(scenario: Scenario, data: dict[str, Any]) -> None:
    """Every ${name} used anywhere must be defined (before anything boots)."""
    known = {*BUILTIN_VARS, *scenario.vars}

    def walk(value: Any, where: tuple[Any, ...]) -> None:
        if isinstance(value, str):
            for name in VARIABLE.findall(value):
                if name not in known and not PARTITION_VAR.fullmatch(name):
                    raise ScenarioError(scenario.unknown_var(name, where))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*where, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, (*where, i))

    walk(data, ())


def json_schema() -> dict[str, Any]:
    """The scenario format as JSON Schema (documented in the README)."""
    return Scenario.model_json_schema()


def load_all(paths: list[Path]) -> list[Scenario]:
    """Files, and every *.yaml / *.yml in folders; all validated before anything runs."""
    files: list[Path] = []
    for path in paths:
        files += sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    if not files:
        raise HarnessError(f"no scenario files in {', '.join(map(str, paths))}")
    return [load(f) for f in files]
