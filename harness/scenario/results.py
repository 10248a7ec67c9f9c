"""What a scenario cell came to, as typed values: the timeline, the attempts, the outcome.

The runner fills these in; `timeline.json` and `result.json` are written from them
(`to_json`), and `CellResult.load` reads a `result.json` back (for `harness report`,
which may run on another machine than the one that ran the cells).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

Status = Literal["passed", "failed", "skipped", "running"]
T = TypeVar("T")


def to_jsonable(value: object) -> Any:
    """Dataclasses (nested), paths and tuples as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.metadata.get("json", True)}  # fmt: skip
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(to_jsonable(value), indent=2, default=str) + "\n")


@dataclass
class StepRecord:
    index: int
    step: str
    line: int
    start_s: float
    elapsed_s: float = 0.0
    status: Status = "running"
    detail: object | None = None  # the step's own result (an OtaReport, a Boot, ...)
    cut: int | None = None  # ran after a power cut at this many flash operations


@dataclass(frozen=True)
class CutPoint:
    """The power went after `after` of the step's `of` flash operations."""

    after: int  # operations (or, cut by time, milliseconds into the step)
    of: int
    last: str  # the last operation done before the power went ("" when none was)
    next: str  # the operation the cut stopped ("" when all were done)
    by: str = "operations"  # or `time`: the flash chip's operations could not be counted
    why: str = ""  # why by time
    offset: int = -1  # where the operation the cut stopped (or the last one) was

    def short(self) -> str:
        if self.by == "time":
            return f"{self.after / 1000:.2f} s/{self.of / 1000:.2f} s"
        return f"{self.after}/{self.of}"

    def label(self) -> str:
        if self.by == "time":
            return (f"{self.after / 1000:.2f} s into the step of {self.of / 1000:.2f} s (cut "
                    f"by time: {self.why})")  # fmt: skip
        if self.after == 0:
            return f"before operation 1 of {self.of} ({self.next})"
        if self.after == self.of:
            return f"after the last of {self.of} operations ({self.last})"
        return f"after operation {self.after} of {self.of} ({self.last}; next: {self.next})"


@dataclass
class CutOutcome:
    """What one power-on after one cut point came to."""

    point: CutPoint
    status: Status
    booted: str | None
    otadata: list[str]  # both records' states, after the steps ran
    selects: str | None  # the slot otadata selects then
    changed: dict[str, int]  # partition -> sectors the cut left different from before
    bootloader: list[str]  # ESP-IDF E/W lines from the power-on on
    message: str = ""
    stretches: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) changed


def cut_property(outcome: CutOutcome) -> tuple[str, str]:
    """A cut point's outcome as one JUnit property: `power_cut` = `after operation 37 of
    350 (...): passed, booted ota_0, otadata VALID UNDEFINED`."""
    states = " ".join(outcome.otadata) or "-"
    return ("power_cut", f"{outcome.point.label()}: {outcome.status}, booted "
                         f"{outcome.booted or '-'}, otadata {states}")  # fmt: skip


def cut_table(outcomes: list[CutOutcome]) -> str:
    """One line per cut point: operations done, the one the power stopped, the sectors it
    left changed, what booted, otadata, what the bootloader said first, the outcome."""
    rows = [("cut", "the power went", "left changed (sectors)", "booted", "otadata",
             "bootloader", "outcome")]  # fmt: skip
    for o in outcomes:
        p = o.point
        went = f"before {p.next}" if p.next else f"after {p.last}" if p.last else "-"
        if p.by == "time":
            went = f"by time, {p.why}"
        left = ", ".join(f"{name} {n}" for name, n in o.changed.items()) or "nothing"
        rows.append((p.short(), went, left, o.booted or "-",
                     " ".join(o.otadata) or "-", o.bootloader[0] if o.bootloader else "-",
                     o.status if not o.message else f"{o.status}: {o.message}"))  # fmt: skip
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  " + "  ".join(f"{cell:<{width[i]}}" for i, cell in enumerate(r[:-1])) + f"  {r[-1]}"
        for r in rows
    )


@dataclass
class Attempt:
    attempt: int
    status: Status
    message: str = ""
    artifacts: str = ""

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


@dataclass
class CellResult:
    name: str
    status: Status
    message: str = ""
    elapsed_s: float = 0.0
    artifacts: str = ""
    booted: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    timeline: list[StepRecord] = field(default_factory=list)
    firmware: FirmwareUsed | None = None
    image: ImageUsed | None = None
    watchdogs: bool | None = None  # the emulated timer-group watchdogs ran (None: unknown)
    cuts: list[CutOutcome] = field(default_factory=list)  # each power cut point's outcome
    scenario: str = ""  # the scenario file (for the command that reruns the cell)
    title: str = ""  # the scenario's title
    flash_size: str = ""  # 16MB

    @property
    def serial_logs(self) -> list[Path]:
        root = Path(self.artifacts)
        return sorted(root.glob("serial.log")) + sorted(root.glob("attempt-*/serial.log"))

    def detail(self, kind: str, of: type[T]) -> T | None:
        """The first step `kind`'s detail, if it is an `of`."""
        for record in self.timeline:
            if record.step == kind and isinstance(record.detail, of):
                return record.detail
        return None

    def write(self, folder: Path) -> None:
        write_json(folder / "result.json", self)

    @classmethod
    def load(cls, path: Path) -> CellResult:
        """A result.json (step details stay JSON: they are for people from here on)."""
        data = json.loads(path.read_text())
        fw, image = data.get("firmware"), data.get("image")
        return cls(
            name=str(data["name"]),
            status=data["status"],
            message=str(data.get("message", "")),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            artifacts=str(data.get("artifacts", path.parent)),
            booted=data.get("booted"),
            attempts=[
                Attempt(
                    int(a.get("attempt", i + 1)),
                    a.get("status", "failed"),
                    str(a.get("message", "")),
                    str(a.get("artifacts", "")),
                )
                for i, a in enumerate(data.get("attempts", []))
            ],
            firmware=FirmwareUsed(**fw) if isinstance(fw, dict) else None,
            image=ImageUsed(**image) if isinstance(image, dict) else None,
            watchdogs=data.get("watchdogs"),
            cuts=[_cut(c) for c in data.get("cuts", [])],
            scenario=str(data.get("scenario", "")),
            title=str(data.get("title", "")),
            flash_size=str(data.get("flash_size", "")),
        )


def _cut(data: dict[str, Any]) -> CutOutcome:
    stretches = [(int(o), int(n)) for o, n in data.get("stretches", [])]
    return CutOutcome(**{**data, "point": CutPoint(**data["point"]), "stretches": stretches})
