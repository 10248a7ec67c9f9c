"""What the HTML report shows, as typed values read from an artifacts folder.

The cells come from harness.scenario.results (`iter_cells`): each `CellResult` with its
timeline (step details typed by kind), the lines `expect` matched and the `not_expect`
that failed, and its flash summaries before and after the run (partitions, otadata,
the bootloader's choice, what the run wrote); beside them, `serial.log`. The template
only lays these values out; everything it shows is decided here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...emulator.console import strip_ansi
from ...emulator.ota import OtaReport
from ...scenario.results import (
    FAULT_COLUMNS,
    Attempt,
    CellResult,
    FaultOutcome,
    FlashSummary,
    StepRecord,
    by_step,
    fault_rows,
    iter_cells,
    load_cell,
)
from ...served import Served
from . import partmap

STATUSES = ("passed", "failed", "skipped", "retried")
MAX_LOG_LINES = 1500  # serial lines drawn per cell; the rest is a link to the file
HEAD_LINES = 300  # of them, from the start (the boot); the others are the end
MAX_LINE = 240  # characters of one line (a host tool's traffic is one long line)
_STAMP = re.compile(r"^\[\s*[\d.]+\] ")
_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class LogLine:
    number: int
    text: str
    kind: str  # "" | match | fail | error | warn | note | sent


@dataclass(frozen=True)
class SerialView:
    lines: list[LogLine]
    total: int
    cut: int  # lines left out of the page (0: all shown)
    href: str  # the full log, relative to the report ("" when not beside it)
    after_head: int  # lines[:after_head] are the start; the rest the end


@dataclass(frozen=True)
class HttpView:
    """The host's HTTP server in a networked cell: its URL as the board reaches it, and
    each request as the server saw it (harness.scenario.results.HttpLog)."""

    url: str
    requests: list[Served]


@dataclass(frozen=True)
class StepBar:
    index: int
    step: str
    line: int
    status: str
    x: float
    width: float
    start_s: float
    elapsed_s: float
    detail: str
    branch: str | None  # the fault point it ran after


@dataclass(frozen=True)
class PointView:
    """One point of a fault: its row (the columns of `FaultView`), and the flash it left,
    drawn (changed stretches marked, where the fault acted at `x`)."""

    outcome: FaultOutcome
    row: tuple[str, ...]
    map: partmap.FlashMap | None
    x: float | None  # where the fault acted, in the map's units


@dataclass(frozen=True)
class FaultView:
    """A fault step's points, whatever the fault: the same table as the text report's."""

    fault: str  # its step kind
    step: int  # its number in the scenario
    points: list[PointView]
    columns: tuple[str, ...] = FAULT_COLUMNS

    @property
    def passed(self) -> int:
        return sum(p.outcome.status == "passed" for p in self.points)


@dataclass(frozen=True)
class CellView:
    """One cell: its name, verdict and evidence."""

    anchor: str
    name: str
    scenario: str
    title: str
    column: str  # `16mb-v1.25.0`: the grid's column
    release: str
    size: str
    status: str  # passed | failed | skipped | retried
    elapsed_s: float
    failure: str  # the harness's one-line failure ("" when it passed)
    message: str
    booted: str | None
    attempts: list[Attempt]
    maps: list[tuple[str, list[partmap.FlashMap]]]  # (before | after, [whole, zoom])
    steps: list[StepBar]
    serial: SerialView | None
    faults: list[FaultView]
    http: HttpView | None
    rerun: str
    firmware: str
    image: str
    update: str = ""  # the release it is updated to (a matrix with an update axis)

    @property
    def verdict(self) -> str:
        """An upgrade square's word: the cell passed (yes), failed (no), was skipped, or
        the emulator failed its last attempt (no answer: a stalled guest is not a no)."""
        if self.status == "failed" and self.attempts and self.attempts[-1].emulator:
            return "no answer"
        return {"passed": "yes", "retried": "yes", "failed": "no"}.get(self.status, "skip")

    @property
    def reason(self) -> str:
        """What failed, in a few words (the failure line after `failed: `; an ESP-IDF
        error's name where set_boot() raised one)."""
        why = self.failure.split(" failed: ", 1)[-1].split(" (silent", 1)[0]
        code = re.search(r"ESP_ERR_\w+", why)
        if why.startswith("set_boot() raised") and code:
            return f"set_boot(): {code.group(0)}"
        return why if len(why) <= 60 else why[:57] + "..."

    @property
    def hover(self) -> str:
        if self.status == "skipped":
            return self.message
        if len(self.attempts) > 1:
            return "; ".join(a.line() for a in self.attempts)
        return self.failure or f"{self.status} in {self.elapsed_s:.1f} s"


@dataclass(frozen=True)
class FirmwareRow:
    name: str
    sha256: str
    pinned: bool
    origin: str


@dataclass(frozen=True)
class UpgradeGrid:
    """A scenario with an update axis at one flash size: the release a board was flashed
    with (rows) x the release it is updated to (columns); each square is a cell."""

    scenario: str
    title: str
    size: str
    froms: list[str]
    tos: list[str]
    squares: dict[tuple[str, str], CellView]

    def at(self, source: str, target: str) -> CellView | None:
        return self.squares.get((source, target))

    @property
    def anchor(self) -> str:
        return f"upgrades-{self.scenario}-{self.size}".lower()


def upgrade_grids(cells: list[CellView]) -> list[UpgradeGrid]:
    """One from x to grid per scenario and size, of the cells with an update."""
    grids = []
    for scenario, size in sorted({(c.scenario, c.size) for c in cells if c.update},
                                 key=lambda k: (k[0], len(k[1]), k[1])):  # fmt: skip
        mine = [c for c in cells if c.update and c.scenario == scenario and c.size == size]
        grids.append(UpgradeGrid(
            scenario, mine[0].title, size,
            sorted({c.release for c in mine}, key=_version_key),
            sorted({c.update for c in mine}, key=_version_key),
            {(c.release, c.update): c for c in mine},
        ))  # fmt: skip
    return grids


@dataclass
class ReportView:
    title: str
    cells: list[CellView]
    columns: list[str]  # grid columns, by release then size
    rows: list[str]  # scenarios
    firmware: list[FirmwareRow]
    qemu: list[str]
    totals: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    upgrades: list[UpgradeGrid] = field(default_factory=list)  # from x to, per size

    def at(self, scenario: str, column: str) -> CellView | None:
        return next((c for c in self.cells if c.scenario == scenario and c.column == column), None)

    @property
    def releases(self) -> list[str]:
        return sorted({c.release for c in self.cells}, key=_version_key)

    @property
    def sizes(self) -> list[str]:
        return sorted({c.size for c in self.cells}, key=lambda s: (len(s), s))


def load(artifacts: Path, page: Path, title: str = "",
         folders: Sequence[Path] | None = None) -> ReportView:  # fmt: skip
    """Every cell under `artifacts` (merged CI artifacts too: any depth), or the cell
    `folders` given."""
    if folders is not None:
        results = [load_cell(f) for f in sorted(folders) if (f / "result.json").exists()]
    else:
        results = list(iter_cells(artifacts))
    cells = [cell(result, page.parent) for result in results]
    cells.sort(key=lambda c: (c.scenario, _version_key(c.release), c.size))
    plain = [c for c in cells if not c.update]  # cells with an update: the from x to grids
    columns = sorted({c.column for c in plain}, key=lambda k: _column_key(k, plain))
    rows = sorted({c.scenario for c in plain})
    totals = {s: sum(c.status == s for c in cells) for s in STATUSES}
    firmware: dict[str, FirmwareRow] = {}
    qemus: set[str] = set()
    for result in results:
        fw = result.firmware
        if fw is not None:
            firmware[fw.path] = FirmwareRow(Path(fw.path).name, fw.sha256, fw.pinned, fw.origin)
        words = result.qemu_command
        if words:
            qemus.add(words[0])
    return ReportView(
        title or f"esp32-ota-harness: {len(cells)} cells in {artifacts}",
        cells, columns, rows, sorted(firmware.values(), key=lambda f: f.name), sorted(qemus),
        totals, round(sum(c.elapsed_s for c in cells), 1), upgrade_grids(cells),
    )  # fmt: skip


def _version_key(release: str) -> tuple[int, ...]:
    found = _VERSION.search(release)
    return tuple(int(n) for n in found.groups()) if found else (0,)


def _column_key(column: str, cells: list[CellView]) -> tuple[Any, ...]:
    one = next(c for c in cells if c.column == column)
    return _version_key(one.release), one.release, len(one.size), one.size


def cell(result: CellResult, page_dir: Path) -> CellView:
    status: str = result.status
    if status == "passed" and len(result.attempts) > 1:
        status = "retried"
    failure = result.message.splitlines()[0] if result.message and status == "failed" else ""
    summaries = _summaries(result)
    return CellView(
        anchor=re.sub(r"[^A-Za-z0-9_-]+", "-", result.name).strip("-"),
        name=result.name,
        scenario=result.cell.scenario,
        title=result.title,
        column=result.cell.id,
        release=result.cell.release,
        size=result.cell.flash_size.upper(),
        status=status,
        elapsed_s=result.elapsed_s,
        failure=failure,
        message=result.message,
        booted=result.booted,
        attempts=result.attempts,
        maps=_maps(summaries, result.booted, result.timeline),
        steps=_bars(result.timeline),
        serial=_serial(result, page_dir),
        faults=_faults(summaries.get("before"), result.faults),
        http=_http(result),
        rerun=_rerun(result),
        firmware=Path(result.firmware.path).name if result.firmware else "",
        image=result.image.conversion if result.image else "",
        update=result.cell.update or "",
    )


@dataclass(frozen=True)
class _Summary:
    """A cell's flash summary, with its regions laid out."""

    flash: FlashSummary
    regions: tuple[tuple[str, str, int, int], ...]


def _summaries(result: CellResult) -> dict[str, _Summary]:
    """`before` and `after`, where the cell left them."""
    out = {}
    for when in ("before", "after"):
        flash = result.flash(when)
        if flash is not None:
            regions = partmap.regions(flash.partitions, flash.filesystem, flash.flash_size)
            out[when] = _Summary(flash, regions)
    return out


def _maps(summaries: dict[str, _Summary], booted: str | None,
          timeline: list[StepRecord[Any]]) -> list[tuple[str, list[partmap.FlashMap]]]:  # fmt: skip
    out = []
    for when, summary in summaries.items():
        flash = summary.flash
        written = _written(flash, timeline) if when == "after" else ()
        layout = partmap.Layout(
            f"{when} the run", flash.flash_size, summary.regions,
            booted=booted if when == "after" else None, written=written,
            otadata=partmap.records(flash.otadata), selects=flash.otadata_selects.slot,
            reason=flash.otadata_selects.reason,
        )  # fmt: skip
        out.append((when, partmap.both(layout)))
    return out


def _faults(before: _Summary | None, outcomes: list[FaultOutcome]) -> list[FaultView]:
    """Each fault step's points over the flash before the run, as the cell's table lays it
    out."""
    views = []
    for (step, kind), mine in by_step(outcomes).items():
        points = [_point(before, o, row) for o, row in zip(mine, fault_rows(mine), strict=True)]
        views.append(FaultView(kind, step, points))
    return views


def _point(before: _Summary | None, o: FaultOutcome, row: tuple[str, ...]) -> PointView:
    if before is None:
        return PointView(o, row, None, None)
    size = before.flash.flash_size
    marks = tuple(("changed", offset, length) for offset, length in o.stretches)
    fmap = partmap.draw(partmap.Layout(o.point.short, size, before.regions, written=marks))
    x = o.point.offset * partmap.WIDTH / size if o.point.offset >= 0 else None
    return PointView(o, row, fmap, x)


def _written(
    flash: FlashSummary, timeline: list[StepRecord[Any]]
) -> tuple[tuple[str, int, int], ...]:
    """(label, offset, size): each OTA step's payload where it went, then the other
    sectors the run changed (the flash summary's `written`, compared with the image)."""
    slots = {p.name: p.offset for p in flash.partitions}
    marks: list[tuple[str, int, int]] = []
    for step in timeline:
        ota = step.detail
        if isinstance(ota, OtaReport) and ota.target in slots and ota.bytes_written:
            size = ota.bytes_written
            what = f"{ota.payload_kind or 'payload'} written into {ota.target}"
            label = f"{what} ({ota.method or 'ota'}), {partmap.size_text(size)}"
            marks.append((label, slots[ota.target], size))
    for w in flash.written:
        if not any(o <= w.offset and w.offset + w.size <= o + n for _, o, n in marks):
            marks.append((f"changed: {w.partition}, {partmap.size_text(w.size)}", w.offset,
                          w.size))  # fmt: skip
    return tuple(marks)


def _bars(timeline: list[StepRecord[Any]]) -> list[StepBar]:
    end = max((s.start_s + s.elapsed_s for s in timeline), default=0.0) or 1.0
    scale = partmap.WIDTH / end
    return [
        StepBar(s.index, s.step, s.line, s.status, round(s.start_s * scale, 2),
                max(round(s.elapsed_s * scale, 2), 1.5), s.start_s, s.elapsed_s,
                _detail(s), s.branch)
        for s in timeline
    ]  # fmt: skip


def _detail(step: StepRecord[Any]) -> str:
    """A step's detail in a line: the fields that say something (otadata before and after
    an OTA is drawn in the maps)."""
    keep = {k: v for k, v in step.detail_fields().items()
            if v not in (None, [], {}, "") and k not in ("before", "after")}  # fmt: skip
    parts = []
    for key, value in keep.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str)
        parts.append(f"{key}: {value}" if key else str(value))
    text = "; ".join(parts)
    return text if len(text) < 600 else text[:600] + " ..."


def _http(result: CellResult) -> HttpView | None:
    log = result.http_log()
    return HttpView(log.url, log.requests) if log is not None else None


def _serial(result: CellResult, page_dir: Path) -> SerialView | None:
    """The serial log of the attempt the verdict is from, the lines that decided it marked."""
    path = result.last_run / "serial.log"
    if not path.exists():
        return None
    raw = path.read_text("utf-8", "replace").splitlines()
    texts = [_STAMP.sub("", strip_ansi(line)) for line in raw]
    kinds = [_kind(t) for t in texts]
    _mark_matches(texts, kinds, result.matched)
    if result.violation is not None:
        failed = result.violation.line.strip()
        for i, text in enumerate(texts):
            if failed and (text.strip() == failed or failed in text):
                kinds[i] = "fail"
                break
    keep = list(range(len(raw)))
    after_head = len(raw)
    if len(raw) > MAX_LOG_LINES:
        tail = MAX_LOG_LINES - HEAD_LINES
        marked = {i for i, k in enumerate(kinds) if k in ("match", "fail")}
        keep = sorted(set(range(HEAD_LINES)) | set(range(len(raw) - tail, len(raw))) | marked)
        after_head = HEAD_LINES
    lines = [LogLine(i + 1, _shorten(texts[i]), kinds[i]) for i in keep]
    try:
        href = os.path.relpath(path, page_dir)
    except ValueError:
        href = ""
    return SerialView(lines, len(raw), len(raw) - len(keep), href.replace(os.sep, "/"), after_head)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")  # REPL control bytes: not for the page


def _shorten(text: str) -> str:
    text = _CONTROL.sub("", strip_ansi(text))
    if len(text) <= MAX_LINE:
        return text
    return f"{text[:MAX_LINE]} ... ({len(text) - MAX_LINE} more characters in the file)"


def _kind(text: str) -> str:
    if text.startswith("-- "):
        return "note"
    if text.startswith(">> "):
        return "sent"
    if re.match(r"^E \(\d+\) ", text) or "Guru Meditation" in text or "abort() was called" in text:
        return "error"
    if re.match(r"^W \(\d+\) ", text):
        return "warn"
    return ""


def _mark_matches(texts: list[str], kinds: list[str], matched: list[str]) -> None:
    """The lines `expect` steps matched, in order."""
    at = 0
    for wanted in matched:
        for i in range(at, len(texts)):
            if texts[i].strip() == wanted.strip():
                kinds[i], at = "match", i + 1
                break


def _rerun(result: CellResult) -> str:
    """The command that reruns just this cell."""
    if not result.scenario:
        return ""
    scenario = result.scenario
    with contextlib.suppress(ValueError):  # another drive (Windows): keep it absolute
        relative = os.path.relpath(scenario)
        scenario = scenario if relative.startswith("..") else relative
    cmd = ["harness", "run", scenario]
    fw = result.firmware
    if fw is not None:
        cmd += ["--firmware", fw.entry or fw.path]
    if result.update is not None:
        cmd += ["--update", result.update.entry or result.update.path]
    cmd += ["--flash-size", result.cell.flash_size]
    return shlex.join(cmd)
