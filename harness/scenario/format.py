"""The scenario file format, and nothing else: pydantic models, their checks, their JSON Schema.

A scenario names the failure it reproduces (and, optionally, where it was reported), the
images it runs on (a matrix of flash sizes x firmware, optionally x PSRAM), and ordered
steps, each in the format of harness.scenario.stepformats. `load()` validates a file and turns any
problem into one line, `file:line: what is wrong`.

Importing this module loads no emulator code (QEMU, pexpect, pyserial); `harness schema`
and editors use it alone. The steps are the harness's own and those of installed
plugins, whose formats load first (harness.scenario.plugins), so the schema has them.
What a step *does* is harness.scenario.steps; turning a scenario into runnable cells is
harness.scenario.plan.

Variables: `${firmware}`, `${firmware_dir}`, `${flash_size}`, `${scenario_dir}`, any under
`vars:`, and the run's own (RUNTIME_VARS, `${offset_PARTITION}`), known once a cell runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from .. import yamlfile
from ..errors import HarnessError
from ..flash.images import PAYLOAD_KINDS
from ..flash.recipes import Psram
from ..flash.size import EmulatedSize, emulated_size
from . import plugins
from .stepformats import STEP_FORMATS as STEP_FORMATS
from .stepformats import Args, Need, ServedFile, _listify

plugins.load_formats()  # a plugin's steps are in the schema built below

VARIABLE = re.compile(r"\$\{([^}]*)\}")


def payload_var(kind: str) -> str:
    """The variable naming a payload file: full-image -> payload_full_image."""
    return f"payload_{kind.replace('-', '_')}"


# known once the cell runs: the served port, the run's folder and files, payload files,
# the host's HTTP server as the board reaches it (`http`) and a download's URL (`url`)
RUNTIME_VARS = ("port", "rfc2217", "run_dir", "image", "python", "http", "url",
                *(payload_var(k) for k in PAYLOAD_KINDS))  # fmt: skip
NETWORK_VARS = ("http", "url")  # the host's HTTP server: a networked cell's (`needs()`)
# a matrix with an `update` axis: the update's file and release (`app-of:${update}`: its app)
UPDATE_VARS = ("update", "update_version")
BUILTIN_VARS = ("firmware", "firmware_version", "firmware_dir", "flash_size", "scenario_dir",
                *UPDATE_VARS, *RUNTIME_VARS)  # fmt: skip
# ${offset_ota_1}, ${offset_otadata}, ...: where a partition of the cell's image starts
# (hex), so host commands find the slot on every layout, converted or not
PARTITION_VAR = re.compile(r"offset_(\w+)")
ScenarioError = yamlfile.FileFormatError


# -- the file --------------------------------------------------------------------------


def _step_model(kind: str, args: type[Args]) -> type[BaseModel]:
    """The one-key mapping `{kind: args}` a step is written as."""
    config = ConfigDict(extra="forbid", title=kind)
    return type(kind, (BaseModel,), {"__annotations__": {kind: args}, "model_config": config})


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value)))
    return None


if TYPE_CHECKING:
    Step = BaseModel
else:  # one member per registered step, so the schema and the errors name every step
    Step = Annotated[
        Union[tuple(Annotated[_step_model(k, t), Tag(k)] for k, t in STEP_FORMATS.items())],  # noqa: UP007
        Discriminator(_step_kind),
    ]


def step_args(step: BaseModel) -> Args:
    """The arguments of a validated step."""
    value = getattr(step, next(iter(type(step).model_fields)))
    assert isinstance(value, Args)
    return value


class ImageSpec(BaseModel):
    """How each cell's flash image differs from its size's recipe (images/recipes/)."""

    model_config = ConfigDict(extra="forbid")

    layout: Literal["keep", "ota"] | None = None  # None: the recipe's
    resize: str | None = None
    header_flash_size: EmulatedSize | None = None  # what the bootloader header claims (-f)
    vfs: dict[str, str] = Field(default_factory=dict)  # device path -> host path
    # partition -> payload kind or file, written at its offset like `esptool write_flash`
    flash: dict[str, str] = Field(default_factory=dict)
    psram: Psram | None = None
    # built: formatted at image build time (with `vfs:` in it); first-boot: left erased,
    # so the firmware makes it at its first boot, as on a board just flashed
    filesystem: Literal["built", "first-boot"] = "built"


class Serve(BaseModel):
    """The host's HTTP server for a networked cell (`${http}`, 10.0.2.2 to the board):
    URL path -> a payload kind, `app-of:FILE` or a file (relative to the scenario), or
    `{source: ..., close_after: N, ...}` to serve it wrong on purpose."""

    model_config = ConfigDict(extra="forbid")

    files: dict[str, ServedFile] = Field(default_factory=dict)

    @field_validator("files", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        """`PATH: SOURCE` is `PATH: {source: SOURCE}`."""
        if isinstance(value, dict):
            return {k: {"source": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


class Matrix(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flash_size: list[EmulatedSize] = Field(min_length=1)
    # manifest entries (ESP32_GENERIC-OTA@v1.25.0), file paths or globs; variables allowed
    firmware: list[str] = Field(min_length=1)
    psram: list[bool] | None = None
    # a second release per cell: the board is flashed with `firmware` and updated to it
    # (`app-of:${update}`); manifest entries, paths or globs, as `firmware`
    update: list[str] | None = Field(default=None, min_length=1)
    # which (firmware, update) pairs make cells: all, or only updates of a later (earlier)
    # release than the firmware's
    pairs: Literal["all", "later", "earlier"] = "all"

    _firmware = field_validator("firmware", "update", mode="before")(_listify)

    @field_validator("flash_size", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        """The whole list at once, so an error names the field, not an item of it."""
        sizes = _listify(value)
        return [emulated_size(s) for s in sizes] if isinstance(sizes, list) else sizes


class Scenario(BaseModel):
    """One scenario file."""

    model_config = ConfigDict(extra="forbid")

    title: str  # what it reproduces, in a line
    # link to the report, or where the case comes from: optional for a user's own
    # scenario; the library's convention (tests/test_scenarios.py requires it of scenarios/)
    source: str | None = None
    notes: str | None = None  # where the real bootloader's wording differs from the report
    requires: list[Need] = Field(default_factory=list)
    vars: dict[str, str] = Field(default_factory=dict)
    matrix: Matrix
    image: ImageSpec = Field(default_factory=ImageSpec)
    serve: Serve | None = None  # files on the host's HTTP server (the `network` cells)
    # the emulated timer-group watchdogs: on (as on a board), off (as `idf.py qemu` runs),
    # or unset: the run's setting (--watchdogs), else the run policy's default (off)
    watchdogs: Literal["on", "off"] | None = None

    @field_validator("watchdogs", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        """YAML reads a bare on/off as true/false."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    steps: list[Step] = Field(min_length=1)

    # set by load(), not by the file
    path: Path = Field(default=Path("scenario.yaml"), exclude=True)
    lines: dict[tuple[Any, ...], int] = Field(default_factory=dict, exclude=True)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def step_args(self) -> list[Args]:
        return [step_args(s) for s in self.steps]

    def step_line(self, index: int) -> int:
        return self.lines.get(("steps", index), 0)

    def needs(self) -> set[Need]:
        """What the scenario asks of firmware and image: declared, and its steps' needs
        (serving files means the board downloads them: the network)."""
        served: set[Need] = {"network"} if self.serve is not None else set()
        return {*self.requires, *served, *(need for a in self.step_args for need in a.needs())}

    def unknown_var(self, name: str, where: tuple[Any, ...] | None) -> str:
        """The one-line error for a ${name} nothing defines."""
        line = self.lines.get(where, 0) if where else 0
        if name in UPDATE_VARS and self.matrix.update is None:
            return (f"{self.path}:{line}: ${{{name}}}: the matrix has no `update` axis (add "
                    "`update: [BOARD@VERSION, ...]` under matrix:)")  # fmt: skip
        if name in NETWORK_VARS and "network" not in self.needs():
            return (f"{self.path}:{line}: ${{{name}}}: the cell has no network: add "
                    "`requires: [network]` (or a `wifi` step, or `serve:`)")  # fmt: skip
        part = PARTITION_VAR.fullmatch(name)
        if part:
            return f"{self.path}:{line}: ${{{name}}}: the image has no partition {part.group(1)}"
        known = ", ".join(sorted({*BUILTIN_VARS, *self.vars, "offset_PARTITION"}))
        return f"{self.path}:{line}: unknown variable ${{{name}}} (known: {known})"


# -- loading ------------------------------------------------------------------------


def _message(error: dict[str, Any]) -> str | None:
    if error["type"] == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag", "?")
        return f"unknown step {tag!r}; known steps: {', '.join(STEP_FORMATS)}"
    if error["type"] == "union_tag_not_found":
        return "a step is a mapping with one key, the step's name (e.g. `- boot: prompt`)"
    return None


def load(path: Path) -> Scenario:
    """Read and validate a scenario file; every problem is a ScenarioError `file:line: ...`."""
    scenario, lines, data = yamlfile.load(path, Scenario, what="scenario", message=_message)
    scenario.path, scenario.lines = path, lines
    check(scenario, data)
    return scenario


def from_data(data: dict[str, Any], path: Path) -> Scenario:
    """A scenario made in memory (`harness repro`), checked as a file would be."""
    try:
        scenario = Scenario.model_validate(data)
    except ValueError as exc:
        raise ScenarioError(f"{path}: {str(exc).splitlines()[0]}") from None
    scenario.path = path
    check(scenario, data)
    return scenario


def check(scenario: Scenario, data: dict[str, Any]) -> None:
    """What the models alone cannot say: step order, variables, watchdogs."""
    _check_order(scenario)
    _check_variables(scenario, data)
    _check_watchdogs(scenario)
    _check_update(scenario)


def _check_update(scenario: Scenario) -> None:
    """`pairs:` orders a firmware against an update; a filesystem made at first boot
    cannot also have files baked into it."""
    if scenario.matrix.update is None and scenario.matrix.pairs != "all":
        line = scenario.lines.get(("matrix", "pairs"), 0)
        raise ScenarioError(f"{scenario.path}:{line}: matrix.pairs: needs an `update` axis "
                            "to compare the firmware with")  # fmt: skip
    if scenario.image.filesystem == "first-boot" and scenario.image.vfs:
        line = scenario.lines.get(("image", "vfs"), 0)
        raise ScenarioError(f"{scenario.path}:{line}: image.vfs: a filesystem the firmware "
                            "makes at first boot has no files baked in: `put` them after "
                            "the boot")  # fmt: skip


def _check_watchdogs(scenario: Scenario) -> None:
    """A scenario that waits for a watchdog reset must not run with the watchdogs off."""
    if scenario.watchdogs == "on":
        return
    for i, args in enumerate(scenario.step_args):
        if args.expects_watchdog_reset():
            raise ScenarioError(
                f"{scenario.path}:{scenario.step_line(i)}: steps.{i}: expects a watchdog "
                "reset: set `watchdogs: on` (the run may turn them off otherwise)"
            )


def _check_order(scenario: Scenario) -> None:
    """One boot, device steps only after it, and a power-on (`boot`) right after each
    fault (`power_cut`, `bit_flip`, ...), the only other place a `boot` may be."""
    steps = scenario.step_args
    after_fault = {i + 1 for i, a in enumerate(steps) if a.FAULT is not None}
    for i in sorted(after_fault):
        if i >= len(steps) or steps[i].KIND != "boot":
            line = scenario.step_line(i - 1)
            raise ScenarioError(
                f"{scenario.path}:{line}: steps.{i - 1}: `{steps[i - 1].KIND}` leaves the "
                "board off: make the next step `boot` (the power-on after it)"
            )
    boots = [i for i, a in enumerate(steps) if a.KIND == "boot" and i not in after_fault]
    if len(boots) != 1:
        line = scenario.step_line(boots[1]) if len(boots) > 1 else scenario.lines.get(("steps",), 0)
        raise ScenarioError(
            f"{scenario.path}:{line}: steps: need exactly one `boot` step "
            "(use `reset` to boot again; after a fault such as `power_cut`, `boot` powers "
            "on again)"
        )
    for i, args in enumerate(steps[: boots[0]]):
        if args.DEVICE:
            raise ScenarioError(
                f"{scenario.path}:{scenario.step_line(i)}: steps.{i}: `{args.KIND}` needs a "
                "running device: put it after the `boot` step"
            )


def _known_vars(scenario: Scenario) -> set[str]:
    """The variables a scenario may name: the update's with an update axis, the server's
    in a networked cell."""
    known = {*BUILTIN_VARS, *scenario.vars}
    if scenario.matrix.update is None:
        known -= set(UPDATE_VARS)
    if "network" not in scenario.needs():
        known -= set(NETWORK_VARS)
    return known


def _check_variables(scenario: Scenario, data: dict[str, Any]) -> None:
    """Every ${name} used anywhere must be defined (before anything boots)."""
    known = _known_vars(scenario)

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
    """The scenario format as JSON Schema (`harness schema`, docs/scenarios.md)."""
    return Scenario.model_json_schema()


def load_all(paths: list[Path]) -> list[Scenario]:
    """Files, and every *.yaml / *.yml in folders; all validated before anything runs."""
    files: list[Path] = []
    for path in paths:
        files += sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    if not files:
        raise HarnessError(f"no scenario files in {', '.join(map(str, paths))}")
    return [load(f) for f in files]
