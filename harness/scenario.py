"""Scenario files: what a YAML file may say, checked before anything boots.

A scenario names the failure it reproduces and where it was reported, the images it
runs on (a matrix of flash sizes x firmware files, optionally x PSRAM), and ordered
steps. `load()` parses the YAML keeping every node's line number, validates it with
the pydantic models below, and turns any problem into `file:line: what is wrong`
(a `ScenarioError`). `Scenario.cells()` expands the matrix into `Cell`s, one per
test item, with `${variables}` substituted.

Variables: `${firmware}` (this cell's firmware file), `${firmware_dir}`,
`${flash_size}`, `${scenario_dir}`, and any defined under `vars:`.
"""

from __future__ import annotations

import glob
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveFloat,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from . import images, inspect
from .errors import HarnessError

VARIABLE = re.compile(r"\$\{([^}]*)\}")
BUILTIN_VARS = ("firmware", "firmware_dir", "flash_size", "scenario_dir")
PAYLOAD_KINDS = ("full-image", "app", "truncated-app", "corrupt-app")


class ScenarioError(HarnessError):
    """A scenario file that cannot run as written: `file:line: problem`."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _shorthand(key: str) -> Any:
    """Let a step be written `step: value` for its most common argument."""

    def wrap(value: Any) -> Any:
        return value if isinstance(value, dict) else {key: value}

    return model_validator(mode="before")(classmethod(lambda cls, v: wrap(v)))


def _check_size(value: Any) -> None:
    """parse_flash_size's refusal, as the ValueError pydantic turns into a located error."""
    try:
        images.parse_flash_size(str(value))
    except HarnessError as exc:
        raise ValueError(str(exc)) from None


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class BootArgs(_Args):
    """Power on. `until`: the >>> prompt, a detected boot loop, or just started."""

    until: Literal["prompt", "boot-loop", "started"] = "prompt"
    timeout: PositiveFloat = 30.0
    _short = _shorthand("until")


class ExpectArgs(_Args):
    """Serial output must show `pattern` (all of a list, in order unless ordered: false)."""

    pattern: list[str] = Field(min_length=1)
    regex: bool = False
    ordered: bool = True
    timeout: PositiveFloat = 10.0
    _short = _shorthand("pattern")
    _list = field_validator("pattern", mode="before")(_listify)


class NotExpectArgs(_Args):
    """From here on, fail the moment serial output shows `pattern`."""

    pattern: list[str] = Field(min_length=1)
    regex: bool = False
    _short = _shorthand("pattern")
    _list = field_validator("pattern", mode="before")(_listify)


class ReplArgs(_Args):
    """Run code on the device; check its output exactly, by regex, or that it raises."""

    code: str
    expect: str | None = None
    match: str | None = None
    raises: str | None = None
    timeout: PositiveFloat = 30.0
    _short = _shorthand("code")


class PutArgs(_Args):
    """Copy a host file or folder (relative to the scenario) onto the device's vfs."""

    src: str
    dst: str = "/"


class OtaArgs(_Args):
    """Write a payload into the next OTA slot, select it, reboot.

    payload: full-image | app | truncated-app | corrupt-app (made from this cell's
    firmware, converted as the image is), or a file path. method: `harness` (UART1
    writer) or `library` (a device library's REPL `command`, payload in the vfs).
    select: `set_boot` (MicroPython's Partition.set_boot(), which validates the app),
    `otadata` (write the otadata record directly, as the bootloader reads it), `none`.
    """

    payload: str
    method: Literal["harness", "library"] = "harness"
    command: str | None = None
    device_lib: str | None = None
    device_path: str = "/fw.bin"
    select: Literal["set_boot", "otadata", "none"] = "set_boot"
    set_boot_error: str | None = None
    confirm: bool = False
    reboot: bool = True
    target: str | None = None
    timeout: PositiveFloat = 300.0

    @model_validator(mode="after")
    def _library_needs_command(self) -> OtaArgs:
        if self.method == "library" and not self.command:
            raise ValueError("method: library needs a `command` (the user's REPL line)")
        if self.method == "library" and self.select != "set_boot":
            raise ValueError("method: library selects the slot itself; drop `select`")
        return self


class ResetArgs(_Args):
    """Reset: `soft` is machine.reset() from the app, `hard` is QMP system_reset (EN pin)."""

    kind: Literal["soft", "hard"] = "soft"
    until: Literal["prompt", "started"] = "prompt"
    timeout: PositiveFloat = 60.0
    _short = _shorthand("kind")


class AssertBootedArgs(_Args):
    """The partition MicroPython runs from, as the device reports it."""

    partition: str
    _short = _shorthand("partition")


class AssertOtadataArgs(_Args):
    """otadata in the live flash: record states (sector 0, 1) and/or the slot it selects."""

    states: list[str] | None = None
    selects: str | None = None
    _short = _shorthand("states")


class AssertInspectArgs(_Args):
    """A field of `harness inspect --json` (dotted path) for a payload kind, `image`,
    `flash` (the live flash now) or a file."""

    file: str = "full-image"
    field: str
    equals: Any = None
    contains: str | None = None
    matches: str | None = None


class WriteOtadataArgs(_Args):
    """Write otadata from the device: select a slot with a state, corrupt it, or erase it."""

    select: str | None = None
    state: Literal["NEW", "PENDING_VERIFY", "VALID", "INVALID", "ABORTED", "UNDEFINED"] = (
        "UNDEFINED"
    )
    corrupt: bool = False
    erase: bool = False

    @model_validator(mode="before")
    @classmethod
    def _word(cls, value: Any) -> Any:
        if value in ("corrupt", "erase"):
            return {value: True}
        return value

    @model_validator(mode="after")
    def _one_action(self) -> WriteOtadataArgs:
        if sum([self.select is not None, self.corrupt, self.erase]) != 1:
            raise ValueError("write_otadata takes one of: select: SLOT, corrupt, erase")
        return self


STEP_ARGS: dict[str, type[_Args]] = {
    "boot": BootArgs,
    "expect": ExpectArgs,
    "not_expect": NotExpectArgs,
    "repl": ReplArgs,
    "put": PutArgs,
    "ota": OtaArgs,
    "reset": ResetArgs,
    "write_otadata": WriteOtadataArgs,
    "assert_booted": AssertBootedArgs,
    "assert_otadata": AssertOtadataArgs,
    "assert_inspect": AssertInspectArgs,
}
DEVICE_STEPS = set(STEP_ARGS) - {"boot", "assert_inspect"}


def _step_model(kind: str, args: type[_Args]) -> type[BaseModel]:
    config = ConfigDict(extra="forbid", title=kind)
    return type(kind, (BaseModel,), {"__annotations__": {kind: args}, "model_config": config})


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    return None


Step = Annotated[
    Annotated[_step_model("boot", BootArgs), Tag("boot")]
    | Annotated[_step_model("expect", ExpectArgs), Tag("expect")]
    | Annotated[_step_model("not_expect", NotExpectArgs), Tag("not_expect")]
    | Annotated[_step_model("repl", ReplArgs), Tag("repl")]
    | Annotated[_step_model("put", PutArgs), Tag("put")]
    | Annotated[_step_model("ota", OtaArgs), Tag("ota")]
    | Annotated[_step_model("reset", ResetArgs), Tag("reset")]
    | Annotated[_step_model("write_otadata", WriteOtadataArgs), Tag("write_otadata")]
    | Annotated[_step_model("assert_booted", AssertBootedArgs), Tag("assert_booted")]
    | Annotated[_step_model("assert_otadata", AssertOtadataArgs), Tag("assert_otadata")]
    | Annotated[_step_model("assert_inspect", AssertInspectArgs), Tag("assert_inspect")],
    Discriminator(_step_kind),
]


class ImageSpec(_Args):
    """How each cell's flash image is made from its firmware (see harness.images)."""

    layout: Literal["keep", "ota"] = "keep"
    resize: str | None = None
    header_flash_size: str | None = None  # what the bootloader header claims (-f)
    vfs: dict[str, str] = Field(default_factory=dict)  # device path -> host path
    # partition -> payload kind or file, written at its offset like `esptool write_flash`
    flash: dict[str, str] = Field(default_factory=dict)
    psram: Literal["auto", "on", "off"] = "auto"

    @field_validator("header_flash_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            _check_size(value)
        return value


class Matrix(_Args):
    flash_size: list[str] = Field(min_length=1)
    firmware: list[str] = Field(min_length=1)  # file paths or globs; variables allowed
    psram: list[bool] | None = None

    @field_validator("flash_size", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        for size in _listify(value) or []:
            _check_size(size)
        return _listify(value)

    _firmware = field_validator("firmware", mode="before")(_listify)


class Scenario(BaseModel):
    """One scenario file."""

    model_config = ConfigDict(extra="forbid")

    title: str  # what it reproduces, in a line
    source: str  # link to the report, or where the case comes from
    notes: str | None = None  # where the real bootloader's wording differs from the report
    requires: list[Literal["ota", "spiram"]] = Field(default_factory=list)
    vars: dict[str, str] = Field(default_factory=dict)
    matrix: Matrix
    image: ImageSpec = Field(default_factory=ImageSpec)
    steps: list[Step] = Field(min_length=1)

    # set by load(), not by the file
    path: Path = Field(default=Path("."), exclude=True)
    lines: dict[tuple[Any, ...], int] = Field(default_factory=dict, exclude=True)

    @property
    def name(self) -> str:
        return self.path.stem

    def step_line(self, index: int) -> int:
        return self.lines.get(("steps", index), 0)

    def cells(
        self,
        firmware_dir: Path,
        *,
        flash_sizes: list[str] | None = None,
        firmware: list[str] | None = None,
    ) -> list[Cell]:
        """One Cell per matrix combination; options narrow sizes or replace firmware."""
        sizes = [images.size_name(images.parse_flash_size(s)) for s in self.matrix.flash_size]
        if flash_sizes:
            wanted = [images.size_name(images.parse_flash_size(s)) for s in flash_sizes]
            sizes = [s for s in sizes if s in wanted]
        context = self._context(firmware_dir)
        files: list[tuple[str, Path | None]] = []
        for i, pattern in enumerate(firmware or self.matrix.firmware):
            where = ("matrix", "firmware", i) if not firmware else None
            expanded = self._expand(pattern, context, where)
            found = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
            found = [f for f in found if Path(f).is_file()]
            files += [(_firmware_id(Path(f)), Path(f)) for f in found] or [(expanded, None)]
        if len({fid for fid, _ in files}) < len(files):  # same version twice: use names
            files = [(p.stem if p else fid, p) for fid, p in files]
        psram_axis: list[bool | None] = list(self.matrix.psram) if self.matrix.psram else [None]
        return [
            Cell(self, size, fid, path, psram, context)
            for size, (fid, path), psram in itertools.product(sizes, files, psram_axis)
        ]

    def _context(self, firmware_dir: Path) -> dict[str, str]:
        context = {"firmware_dir": str(firmware_dir), "scenario_dir": str(self.path.parent)}
        for key, value in self.vars.items():
            context[key] = self._expand(value, context, ("vars", key))
        return context

    def _expand(self, text: str, context: dict[str, str], where: tuple[Any, ...] | None) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in context:
                raise ScenarioError(self._unknown_var(name, where))
            return context[name]

        return VARIABLE.sub(value, text)

    def _unknown_var(self, name: str, where: tuple[Any, ...] | None) -> str:
        known = ", ".join(sorted({*BUILTIN_VARS, *self.vars}))
        line = self.lines.get(where, 0) if where else 0
        return f"{self.path}:{line}: unknown variable ${{{name}}} (known: {known})"


@dataclass
class Cell:
    """One matrix combination of one scenario: one test item."""

    scenario: Scenario
    flash_size: str  # '16MB'
    firmware_id: str  # 'v1.25.0'
    firmware: Path | None  # None: nothing matched the pattern
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

    def expand(self, text: str, where: tuple[Any, ...] | None = None) -> str:
        """Substitute ${variables} for this cell (firmware dir comes from the context)."""
        context = dict(self.context)
        context.update(firmware=str(self.firmware or ""), flash_size=self.flash_size)
        return self.scenario._expand(text, context, where)

    def skip_reason(self) -> str | None:
        """Why this cell cannot run here (missing firmware, firmware lacks a feature)."""
        if self.firmware is None:
            return (
                f"no firmware file matches {self.firmware_id}: set HARNESS_FIRMWARE_DIR, "
                "--firmware-dir or --firmware (`harness firmware fetch` downloads releases)"
            )
        data = self.firmware.read_bytes()
        for need in self.scenario.requires:
            if need == "spiram" and not images.needs_psram(data):
                return f"needs a SPIRAM build; {self.firmware.name} is not one"
            if need == "ota" and self.scenario.image.layout != "ota" and not _has_ota(data):
                return f"needs an OTA partition table; {self.firmware.name} has none"
        return None


def _has_ota(firmware: bytes) -> bool:
    try:
        table = inspect.parse_table(inspect.as_flash(firmware))
    except HarnessError:
        return False
    return sum(p.is_ota_app for p in table) >= 2


def _firmware_id(path: Path) -> str:
    found = re.search(r"v\d+\.\d+(?:\.\d+)?(?:-[\w.]+?)?(?=\.app-bin$|\.bin$|$)", path.name)
    return found.group(0) if found else path.stem


def default_firmware_dir() -> Path:
    """HARNESS_FIRMWARE_DIR, else where `harness firmware fetch` keeps downloads."""
    return images.user_cache("HARNESS_FIRMWARE_DIR", "firmware")


# -- loading ------------------------------------------------------------------------


def load(path: Path, firmware_dir: Path | None = None) -> Scenario:
    """Read and validate a scenario file; every problem is a ScenarioError `file:line: ...`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario ({exc.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ScenarioError(f"{path}:{line}: YAML syntax error: {exc.problem}") from None
    if not isinstance(data, dict) or node is None:
        raise ScenarioError(
            f"{path}:1: a scenario is a YAML mapping (title, source, matrix, steps)"
        )
    lines: dict[tuple[Any, ...], int] = {}
    _record_lines(node, (), lines)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_first_error(path, exc, lines)) from None
    scenario.path, scenario.lines = path, lines
    _check_order(scenario)
    _check_variables(scenario, data)
    return scenario


def _record_lines(node: yaml.Node, where: tuple[Any, ...], lines: dict) -> None:
    lines[where] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[(*where, key.value)] = key.start_mark.line + 1
            _record_lines(value, (*where, key.value), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, (*where, i), lines)


def _first_error(path: Path, exc: ValidationError, lines: dict) -> str:
    """pydantic's first error as `file:line: where: message`, in the file's own terms."""
    error = exc.errors()[0]
    loc: tuple[Any, ...] = ()
    for part in error["loc"]:  # pydantic adds union tags to loc; keep the real path
        if (*loc, part) in lines:
            loc = (*loc, part)
    line = lines.get(loc, lines.get((), 1))
    message = str(error["msg"]).removeprefix("Value error, ")
    kind = error["type"]
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag", "?")
        message = f"unknown step {tag!r}; known steps: {', '.join(STEP_ARGS)}"
    elif kind == "union_tag_not_found":
        message = "a step is a mapping with one key, the step's name (e.g. `- boot: prompt`)"
    elif kind == "missing":
        message = f"missing required field {error['loc'][-1]!r}"
    elif kind == "extra_forbidden":
        message = f"unknown field {error['loc'][-1]!r}"
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        message = f"{message} (got {error['input']!r})"
    field = ".".join(str(p) for p in loc) or "scenario"
    return f"{path}:{line}: {field}: {message}"


def _check_order(scenario: Scenario) -> None:
    """Exactly one boot, and device steps only after it."""
    kinds = [next(iter(s.model_fields_set)) for s in scenario.steps]
    boots = [i for i, k in enumerate(kinds) if k == "boot"]
    if len(boots) != 1:
        line = scenario.step_line(boots[1]) if len(boots) > 1 else scenario.lines[("steps",)]
        raise ScenarioError(
            f"{scenario.path}:{line}: steps: need exactly one `boot` step "
            "(use `reset` to boot again)"
        )
    for i, kind in enumerate(kinds[: boots[0]]):
        if kind in DEVICE_STEPS:
            raise ScenarioError(
                f"{scenario.path}:{scenario.step_line(i)}: steps.{i}: `{kind}` needs a "
                "running device: put it after the `boot` step"
            )


def _check_variables(scenario: Scenario, data: dict) -> None:
    """Every ${name} used anywhere must be defined (before anything boots)."""
    known = {*BUILTIN_VARS, *scenario.vars}

    def walk(value: Any, where: tuple[Any, ...]) -> None:
        if isinstance(value, str):
            for name in VARIABLE.findall(value):
                if name not in known:
                    raise ScenarioError(scenario._unknown_var(name, where))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*where, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, (*where, i))

    walk(data, ())


def step_kind(step: BaseModel) -> tuple[str, Any]:
    """(name, args) of a validated step."""
    kind = next(iter(type(step).model_fields))
    return kind, getattr(step, kind)


def json_schema() -> dict[str, Any]:
    """The scenario format as JSON Schema (documented in the README)."""
    return Scenario.model_json_schema()
