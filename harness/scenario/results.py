"""The artifacts of a cell, typed and versioned: the one module that writes and reads them.

A cell's folder holds `result.json` (`CellResult`), `timeline.json` (`Timeline`: each
step as it ran, rewritten after every step so a killed run keeps it) and
`flash-before.json` / `flash-after.json` (`FlashSummary`), each with `schema: 3`. The
runner writes them through these models; every reader (the HTML and markdown reports,
JUnit, `harness repro`, the nightly's summary) gets cells from `iter_cells(folder)` or
`load_cell`, never from the JSON text, so a report can be made on another machine than
the one that ran the cells.

A step's detail is typed by its step kind: it is read back as the type the step's
handler returns (harness.scenario.steps), an `ota` step's as an `OtaReport`. A file of
another schema (before schema 2 there was no `schema` field) is refused in one line
that names its version.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    Tag,
    TypeAdapter,
    ValidationError,
    computed_field,
    model_serializer,
)

from ..errors import HarnessError
from ..flash import formats, ops
from ..served import Served

SCHEMA = 3  # of result.json, timeline.json, flash-before.json and flash-after.json
# (a field added with a default, as FaultOutcome.verdict, keeps it: older files read as before)
RESULT, TIMELINE, HTTP_LOG = "result.json", "timeline.json", "http.json"
FLASH_FILES = {"before": "flash-before.json", "after": "flash-after.json"}
When = Literal["before", "after"]
Status = Literal["passed", "failed", "skipped", "running"]
T = TypeVar("T")
D = TypeVar("D")
M = TypeVar("M", bound=BaseModel)


class ArtifactsError(HarnessError):
    """An artifacts file this harness cannot read: another schema, or damaged."""


# -- a cell's name, in parts -------------------------------------------------------------


class CellId(BaseModel):
    """Which cell: `ota-full-image-into-slot[16mb-v1.25.0]` is scenario, size, firmware;
    `upgrade[16mb-v1.22.0->v1.28.0]` a board flashed with one release, updated to another."""

    model_config = ConfigDict(frozen=True)

    scenario: str  # the scenario file's stem
    flash_size: str  # 16MB
    firmware: str  # the release (v1.25.0), or the file's name where a matrix has one twice
    psram: bool | None = None  # None: the matrix has no PSRAM axis
    update: str | None = None  # the release it is updated to (None: no update axis)

    @model_serializer(mode="wrap")
    def _without_no_update(self, dump: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A cell without an update axis is written as before there was one."""
        data: dict[str, Any] = dump(self)
        if data.get("update") is None:
            data.pop("update", None)
        return data

    @property
    def release(self) -> str:
        """The firmware part of the id, with the PSRAM setting: the report's release."""
        axis = [] if self.psram is None else ["psram" if self.psram else "no-psram"]
        return "-".join([self.firmware, *axis])

    @property
    def id(self) -> str:
        to = f"->{self.update}" if self.update is not None else ""
        return f"{self.flash_size.lower()}-{self.release}{to}"

    @property
    def name(self) -> str:
        return f"{self.scenario}[{self.id}]"


# -- what a cell came to ---------------------------------------------------------------


@dataclass(frozen=True)
class FaultPoint:
    """One point of a fault step: the flash as the fault left it, said for people. Each
    fault decides what its points are (harness.scenario.faults: a power cut's are the
    flash operations done before the power went, a bit flip's the bits it flipped)."""

    key: int  # the fault's own number for the point (a cut: operations done), in order
    short: str  # `37/350`: the point in a table's first column
    label: str  # the point in a sentence
    did: str  # what the fault did to the flash there, in a few words
    offset: int = -1  # where in the flash it did it (-1: nowhere in particular)
    rerun: str = ""  # how to run just this point again
    # the states this point stands for, when it is one of a class that a power-on
    # cannot tell apart (harness.flash.distinct): `412 states, operations 3-2,301`
    covers: str = ""


VerdictKind = Literal["new app", "old app", "other app", "nothing", "hung"]


@dataclass
class Verdict:
    """What a powered-on board holds and runs, judged from the flash and the emulator."""

    kind: VerdictKind
    why: str  # one sentence
    runs: str | None = None  # the partition the MMU maps code from (None: no app mapped)
    code_at: int = -1  # the flash offset of the first app page mapped
    pc_in_flash: bool = False  # a CPU's PC was in the mapped flash in some look
    pcs: list[int] = field(default_factory=list)  # each CPU's PC at the last look
    installed: dict[str, list[str]] = field(default_factory=dict)  # slot -> images it holds
    resets: int = 0  # resets the guest made during the looks

    def line(self) -> str:
        """`new app running (ota_1)`, `nothing running`, `hung`."""
        if self.kind in ("nothing", "hung"):
            return "hung" if self.kind == "hung" else "nothing running"
        return f"{self.kind} running ({self.runs})"

    def holds(self) -> str:
        """`ota_0 old app, ota_1 new app`: what each app slot holds."""
        return ", ".join(f"{slot} {' = '.join(held) or 'neither'}"
                         for slot, held in self.installed.items())  # fmt: skip


@dataclass
class FaultOutcome:
    """What the steps after a fault came to, from a power-on of one point's flash."""

    fault: str  # the fault step's kind: power_cut, bit_flip, ...
    step: int  # the fault step's number in the scenario (from 1)
    point: FaultPoint
    status: Status
    booted: str | None
    otadata: list[str]  # both records' states, after the steps ran
    selects: str | None  # the slot otadata selects then
    changed: dict[str, int]  # partition -> sectors the point left different from before
    bootloader: list[str]  # ESP-IDF E/W lines from the power-on on
    message: str = ""
    stretches: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) changed
    verdict: Verdict | None = None  # what the board held and ran, not asked of it
    coverage: str = ""  # the fault step's coverage line (the same for each of its points)


def fault_property(outcome: FaultOutcome) -> tuple[str, str]:
    """A fault point's outcome as one JUnit property, named for the fault: `power_cut` =
    `after operation 37 of 350 (...): passed, booted ota_0, otadata VALID UNDEFINED`."""
    states = " ".join(outcome.otadata) or "-"
    judged = f", {outcome.verdict.line()}" if outcome.verdict else ""
    return (outcome.fault, f"{outcome.point.label}: {outcome.status}, booted "
                           f"{outcome.booted or '-'}{judged}, otadata {states}")  # fmt: skip


FAULT_COLUMNS = ("point", "what the fault did", "left changed (sectors)", "booted", "verdict",
                 "otadata", "bootloader", "outcome")  # fmt: skip


def fault_rows(outcomes: list[FaultOutcome]) -> list[tuple[str, ...]]:
    """One row per point (FAULT_COLUMNS): the point, what the fault did, the sectors it
    left changed, what booted, the verdict (not asked of the firmware), otadata, what the
    bootloader said first, the outcome."""
    return [
        (o.point.short, (o.point.did or "-") + (f"; stands for {o.point.covers}"
                                                   if o.point.covers else ""),
         ", ".join(f"{name} {n}" for name, n in o.changed.items()) or "nothing",
         o.booted or "-", o.verdict.line() if o.verdict else "-", " ".join(o.otadata) or "-",
         o.bootloader[0] if o.bootloader else "-",
         o.status if not o.message else f"{o.status}: {o.message}")
        for o in outcomes
    ]  # fmt: skip


def fault_table(outcomes: list[FaultOutcome]) -> str:
    """The rows of `fault_rows` as aligned text, with the column names."""
    rows = [FAULT_COLUMNS, *fault_rows(outcomes)]
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  " + "  ".join(f"{cell:<{width[i]}}" for i, cell in enumerate(r[:-1])) + f"  {r[-1]}"
        for r in rows
    )


def by_step(outcomes: list[FaultOutcome]) -> dict[tuple[int, str], list[FaultOutcome]]:
    """The outcomes of each fault step, (its number, its kind) -> its points, by number."""
    steps: dict[tuple[int, str], list[FaultOutcome]] = {}
    for o in outcomes:
        steps.setdefault((o.step, o.fault), []).append(o)
    return dict(sorted(steps.items()))


def verdict_counts(outcomes: list[FaultOutcome]) -> str:
    """`6 old app running (ota_0), 3 new app running (ota_1)`: the points by verdict."""
    counts: dict[str, int] = {}
    for o in outcomes:
        line = o.verdict.line() if o.verdict else "no verdict"
        counts[line] = counts.get(line, 0) + 1
    return ", ".join(f"{n} {line}" for line, n in counts.items())


def fault_summary(outcomes: list[FaultOutcome]) -> str:
    """Per fault step, how many of its points passed, and their table."""
    parts = []
    for (step, kind), mine in by_step(outcomes).items():
        passed = sum(o.status == "passed" for o in mine)
        points = "point" if len(mine) == 1 else "points"
        covered = f"\n  {mine[0].coverage}" if mine[0].coverage else ""
        parts.append(f"step {step} `{kind}`: {passed} of {len(mine)} {points} passed:{covered}\n"
                     f"{fault_table(mine)}")  # fmt: skip
    return "\n".join(parts)


@dataclass
class Attempt:
    attempt: int
    status: Status
    message: str = ""
    artifacts: str = ""
    emulator: bool = False  # failed by the emulator (policy.RETRYABLE), not by the firmware

    def line(self) -> str:
        first = self.message.splitlines()[0] if self.message else ""
        return f"attempt {self.attempt}: {self.status}" + (f" ({first})" if first else "")


@dataclass
class FirmwareUsed:
    path: str
    id: str
    sha256: str
    entry: str | None  # the manifest entry, when the scenario named one
    pinned: bool  # False: the sha256 was recorded on first download, not pinned
    origin: str  # local | cache | downloaded | path


@dataclass
class ImageUsed:
    recipe: str  # images/recipes name (16mb, 16mb-ota, ...)
    conversion: str  # the mp-image-tool-esp32 command, as a user would type it
    notes: list[str] = field(default_factory=list)
    filesystem: str | None = None  # "vfs at 0x310000, 0xf0000 bytes (made at boot)"


@dataclass(frozen=True)
class Violation:
    """A `not_expect` that failed: the rule as the scenario wrote it, the serial line that
    broke it, and the step it showed during (the console records it as it happens)."""

    rule: str
    line: str
    step: int


# -- the timeline: each step, its detail typed by its kind ----------------------------


class StepRecord(BaseModel, Generic[D]):
    """One step as it ran; `detail` is what its handler returned (None while it runs, or
    when it failed). Make one with `StepRecord.of(kind)`, so the detail has its type."""

    index: int
    step: str  # the step's kind: decides the type of `detail`
    line: int
    start_s: float
    elapsed_s: float = 0.0
    status: Status = "running"
    detail: D | None = None
    branch: str | None = None  # ran after a fault, from this point (`power_cut 37/350`)

    @staticmethod
    def of(kind: str) -> type[StepRecord[Any]]:
        """The record of a `kind` step: its detail is the type the step's handler returns."""
        return _record_type(kind)

    def detail_fields(self) -> dict[str, Any]:
        """The detail as JSON values, field by field (for people: the report's step line)."""
        value = self.model_dump(mode="json", include={"detail"}).get("detail")
        return value if isinstance(value, dict) else {} if value is None else {"": value}


def _handlers() -> Mapping[str, Callable[..., object]]:
    """Step kind -> its handler, whose return annotation is the detail's type."""
    from .steps import handlers  # steps imports this module: read when first asked

    return handlers()


@functools.cache
def _detail_type(handler: Callable[..., object]) -> Any:
    return typing.get_type_hints(handler).get("return", Any)


@functools.cache
def _record_type(kind: str) -> type[StepRecord[Any]]:
    handler = _handlers().get(kind)
    detail = _detail_type(handler) if handler is not None else Any
    return typing.cast("type[StepRecord[Any]]", StepRecord[detail])  # type: ignore[valid-type]


def _kind(value: Any) -> str:
    kind = value.get("step") if isinstance(value, dict) else getattr(value, "step", None)
    return kind if isinstance(kind, str) and kind in _handlers() else "*"


def _steps_adapter() -> TypeAdapter[list[StepRecord[Any]]]:
    return _adapter(tuple(_handlers()))


@functools.cache
def _adapter(kinds: tuple[str, ...]) -> TypeAdapter[list[StepRecord[Any]]]:
    """The timeline as a discriminated union tagged by step kind (`*`: a kind this
    harness does not know, read with its detail as plain JSON)."""
    variants = [Annotated[_record_type(k), Tag(k)] for k in kinds]
    union: Any = Union.__getitem__((*variants, Annotated[StepRecord[Any], Tag("*")]))
    return TypeAdapter(list[Annotated[union, Discriminator(_kind)]])


def _typed_steps(value: Any) -> list[StepRecord[Any]]:
    if isinstance(value, list) and all(isinstance(r, StepRecord) for r in value):
        return value
    return _steps_adapter().validate_python(value)


def _dump_steps(steps: list[StepRecord[Any]]) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json") for r in steps]


Steps = Annotated[
    list[StepRecord[Any]],
    PlainValidator(_typed_steps, json_schema_input_type=list[StepRecord[Any]]),
    PlainSerializer(_dump_steps),
]


class _File(BaseModel):
    """A versioned artifacts file."""

    model_config = ConfigDict(populate_by_name=True)

    schema_version: int = Field(default=SCHEMA, alias="schema")

    def _write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(by_alias=True, indent=2) + "\n")


class Timeline(_File):
    """timeline.json: the steps of one attempt, as far as they ran."""

    steps: Steps = Field(default_factory=list)


def write_timeline(folder: Path, steps: list[StepRecord[Any]]) -> None:
    Timeline(steps=steps)._write(folder / TIMELINE)


def load_timeline(folder: Path) -> list[StepRecord[Any]]:
    """The steps of the attempt whose folder this is ([] before the first step)."""
    path = folder / TIMELINE
    return _read(path, Timeline).steps if path.exists() else []


# -- the cell ---------------------------------------------------------------------------


class CellResult(_File):
    """result.json: what a cell came to, with the steps of its last attempt."""

    cell: CellId
    status: Status
    message: str = ""
    elapsed_s: float = 0.0
    artifacts: str = ""  # the folder it was written in (see `folder` for where it is now)
    booted: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    timeline: Steps = Field(default_factory=list)
    matched: list[str] = Field(default_factory=list)  # serial lines `expect` matched, in order
    violation: Violation | None = None  # the `not_expect` that failed, and on which line
    firmware: FirmwareUsed | None = None
    update: FirmwareUsed | None = None  # the release it is updated to (an update axis)
    image: ImageUsed | None = None
    watchdogs: bool | None = None  # the emulated timer-group watchdogs ran (None: unknown)
    faults: list[FaultOutcome] = Field(default_factory=list)  # each fault point's outcome
    scenario: str = ""  # the scenario file (for the command that reruns the cell)
    title: str = ""  # the scenario's title
    _folder: Path | None = PrivateAttr(default=None)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def name(self) -> str:
        return self.cell.name

    @property
    def folder(self) -> Path:
        """Where the cell's files are: where it was read from, else where it was written."""
        return self._folder or Path(self.artifacts)

    @property
    def last_run(self) -> Path:
        """The folder of the attempt the verdict is from: its serial log, its flash."""
        return attempt_folder(self.folder, len(self.attempts) or 1)

    @property
    def serial_logs(self) -> list[Path]:
        root = self.folder
        return sorted(root.glob("serial.log")) + sorted(root.glob("attempt-*/serial.log"))

    @property
    def qemu_command(self) -> list[str]:
        """The first QEMU command line the cell ran ([] when none started)."""
        path = self.folder / "qemu-cmdline.txt"
        return path.read_text().split() if path.exists() else []

    def detail(self, kind: str, of: type[T]) -> T | None:
        """The first step `kind`'s detail, if it is an `of`."""
        for record in self.timeline:
            if record.step == kind and isinstance(record.detail, of):
                return record.detail
        return None

    def http_log(self) -> HttpLog | None:
        """The requests the host's HTTP server answered in the last attempt (None: it
        ran none)."""
        path = self.last_run / HTTP_LOG
        return _read(path, HttpLog) if path.exists() else None

    def flash(self, when: When) -> FlashSummary | None:
        """The flash before or after the last attempt, as its flash summary says."""
        path = self.last_run / FLASH_FILES[when]
        return _read(path, FlashSummary) if path.exists() else None

    def write(self, folder: Path) -> None:
        self._write(folder / RESULT)

    @classmethod
    def load(cls, path: Path) -> CellResult:
        """A result.json, whole: its timeline's details typed by step kind."""
        result = _read(path, cls)
        result._folder = path.parent
        return result


class HttpLog(_File):
    """http.json: the host's HTTP server in one attempt of a networked cell, every
    request as it saw it (rewritten after each, so a killed run keeps it)."""

    url: str  # the server's base URL, as the board reaches it
    requests: list[Served] = Field(default_factory=list)

    def write(self, folder: Path) -> None:
        self._write(folder / HTTP_LOG)


def attempt_folder(cell: Path, number: int) -> Path:
    """Where attempt `number` of a cell keeps its files: the cell's folder, then attempt-N."""
    return cell if number == 1 else cell / f"attempt-{number}"


def load_cell(folder: Path) -> CellResult:
    return CellResult.load(folder / RESULT)


def iter_cells(folder: Path) -> Iterator[CellResult]:
    """Every cell under `folder`, at any depth (several CI jobs' artifacts merged), in
    the order of their folders' paths."""
    for path in sorted(folder.rglob(RESULT)):
        if not path.parent.name.startswith("attempt-"):
            yield CellResult.load(path)


# -- the flash before and after ----------------------------------------------------------


def _int_or_hex(value: Any) -> Any:
    return int(value, 16) if isinstance(value, str) and value.startswith("0x") else value


Hex = Annotated[int, BeforeValidator(_int_or_hex),
                PlainSerializer(lambda v: f"0x{v:x}", return_type=str)]  # fmt: skip


class PartitionEntry(BaseModel):
    name: str
    type: int
    subtype: int
    offset: Hex
    size: int


class WrittenStretch(BaseModel):
    """A run of 4 KB sectors the run changed, within one partition."""

    partition: str
    offset: Hex
    size: int


class FlashSummary(_File):
    """flash-before.json / flash-after.json: the table, otadata and the bootloader's choice."""

    partitions: list[PartitionEntry]
    otadata: tuple[formats.OtaRecord, ...] | None
    otadata_selects: formats.BootChoice
    flash_size: int
    filesystem: formats.FsRegion | None  # where MicroPython's filesystem lives
    written: list[WrittenStretch] = Field(default_factory=list)  # after: what differs

    @classmethod
    def of(cls, flash: bytes, since: bytes | None = None) -> FlashSummary:
        """The summary of a flash image (`since`: the image it started as, to say what
        the run wrote)."""
        state = formats.FlashState.of(flash)
        table = formats.parse_table(flash)
        named = formats.with_fs_region(table, len(flash))
        written = [WrittenStretch(partition=name, offset=offset, size=length)
                   for name, offset, length in ops.changed_stretches(since, flash, named)
                   ] if since is not None else []  # fmt: skip
        return cls(
            partitions=[PartitionEntry(name=p.name, type=p.type, subtype=p.subtype,
                                       offset=p.offset, size=p.size) for p in table],
            otadata=state.otadata, otadata_selects=state.boot, flash_size=len(flash),
            filesystem=formats.fs_region(table, len(flash)), written=written,
        )  # fmt: skip

    def write(self, folder: Path, when: When) -> None:
        self._write(folder / FLASH_FILES[when])


# -- reading ----------------------------------------------------------------------------


def _read(path: Path, model: type[M]) -> M:
    """One artifacts file as `model`, or one line saying why it cannot be."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactsError(f"{path}: cannot be read: {exc}") from None
    version = data.get("schema") if isinstance(data, dict) else None
    if version != SCHEMA:
        written = (f"schema {version}" if version is not None
                   else "the format before schema 2 (no `schema` field)")  # fmt: skip
        raise ArtifactsError(
            f"{path}: written in {written}; this harness reads schema {SCHEMA}: run the "
            "cells again, or report them with the harness that ran them"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ArtifactsError(f"{path}: not a schema {SCHEMA} {path.name}: {where}: "
                             f"{error['msg']}") from None  # fmt: skip
