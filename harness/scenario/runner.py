"""Run one cell's plan: build its image, boot it, run its steps, keep the evidence.

`run_cell()` is the engine behind the pytest plugin, `harness run` and `harness repro`.
The image is built first (an image that cannot be made fails before anything boots);
then each step's handler (harness.scenario.steps) runs with this attempt as its `Run`.
A step that is not met raises `StepFailed`, and every other harness error (timeout,
crash, boot loop, QEMU gone) is reported against the step it happened in. The cell's
artifact folder holds:

    serial.log  qemu-cmdline.txt  qemu-stderr.log   what the run's QEMU saw and said
    timeline.json                                   each step: start, duration, result
    flash-before.json  flash-after.json             partitions, otadata, boot choice
    result.json                                     the outcome, firmware and image used
    flash.bin                                       the flash at the end (failures only)

The plan's policy says how many more attempts an emulator failure gets (QEMU's own
crash, a watchdog reset, a stalled guest), never a firmware result; every attempt keeps
its folder (`attempt-2/`, ...) and is listed in the result.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..emulator.console import log_lines
from ..emulator.device import BootOptions, Device, boot
from ..emulator.httpserver import HttpServer
from ..emulator.policy import retryable
from ..errors import FlashTraceUnavailable, HarnessError, StepFailed, UnexpectedOutput
from ..flash import formats, images
from ..flash.distinct import ReadSet, Seen
from ..flash.firmware import sha256_of
from ..flash.images import BuiltImage
from ..flash.inputs import read_input
from ..sources.manifest import Firmware
from . import cutfile, faults, serving, verdict
from .format import payload_var
from .plan import Cell, CellPlan, Skipped, StepPlan
from .results import (
    Attempt,
    CellResult,
    FaultOutcome,
    FaultPoint,
    FirmwareUsed,
    FlashSummary,
    ImageUsed,
    Status,
    StepRecord,
    Violation,
    When,
    attempt_folder,
    fault_table,
    write_timeline,
)
from .stepformats import STEP_FORMATS
from .steps import Matched, handlers

Progress = Callable[[CellPlan, int, str], None]


@dataclass(frozen=True)
class Setup:
    """Where cells run: their artifacts folder, the QEMU, the image cache, what to keep."""

    artifacts: Path
    qemu: str | Path | None = None  # None: found as harness.emulator.qemu.find_qemu says
    cache: Path | None = None  # None: the user's image cache
    keep_flash: bool = False  # keep flash.bin even when the cell passes


@dataclass(frozen=True)
class StagedSlot:
    """A payload written into an OTA slot of the run's flash copy before QEMU starts."""

    target: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class Built:
    """What the plan's image came to: the flash image, the staged slots, the payloads."""

    image: BuiltImage
    staging: dict[str, StagedSlot]  # payload name -> where its staged step wrote it
    offsets: dict[str, int]  # partition -> offset, for ${offset_NAME}


def payload_path(plan: CellPlan, name: str, cache: Path | None = None) -> Path:
    """A payload kind made from the cell's firmware, the app of a release (`app-of:FILE`),
    or a file relative to the scenario."""
    if name in images.PAYLOAD_KINDS:
        return images.payload(plan.image.recipe, name, cache)
    base = plan.scenario.path.parent.resolve()
    if name.startswith(images.APP_OF):
        return images.app_of(base / name.removeprefix(images.APP_OF), cache)
    return base / name


def build(plan: CellPlan, cache: Path | None = None) -> Built:
    """The cell's flash image (cached by content), and its staged payloads placed."""
    spec = plan.image
    vfs = [(payload_path(plan, f.source, cache) if f.payload else Path(f.source), f.device_path)
           for f in spec.files]  # fmt: skip
    writes = [(part, payload_path(plan, src, cache)) for part, src in spec.writes]
    recipe = spec.recipe.replace(vfs_files=tuple(vfs), writes=tuple(writes))
    built = images.build_image(recipe, cache)
    with built.path.open("rb") as f:  # the table: one sector at 0x8000; otadata is blank
        head = f.read(formats.TABLE_OFFSET + formats.SECTOR)
    table = formats.parse_table(head)
    running = formats.FlashState.of(built.path.read_bytes()).boot.slot
    staging: dict[str, StagedSlot] = {}
    for want in plan.staged:
        slot = table.get(want.target) if want.target else formats.next_update_slot(table, running)
        if slot is None or not slot.is_app:
            raise HarnessError(f"no OTA slot {want.target or '(next)'} to stage {want.payload} in")
        taken = [p for p, s in staging.items() if s.target == slot.name and p != want.payload]
        if taken:
            raise HarnessError(
                f"{want.payload} and {taken[0]} would both be staged into {slot.name} before "
                "the boot: give one of them method: harness"
            )
        data = read_input(payload_path(plan, want.payload, cache))[: slot.size]
        staging[want.payload] = StagedSlot(slot.name, slot.offset, data)
    return Built(built, staging, {p.name: p.offset for p in table})


def run_cell(cell: Cell, setup: Setup, progress: Progress | None = None) -> CellResult:
    """Run every step of the cell, as many times as its policy allows for emulator failures."""
    folder = setup.artifacts / _safe(cell.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    about = CellResult(cell=cell.cell_id, status="skipped", artifacts=str(folder),
                       scenario=str(cell.scenario.path), title=cell.scenario.title)  # fmt: skip
    if isinstance(cell, Skipped):
        about.message = cell.reason
        about.write(folder)  # the report's grid shows skips with their reason
        return about
    fw, start = cell.firmware, time.monotonic()
    result = about.model_copy(update=dict(
        status="failed", watchdogs=cell.policy.watchdogs, firmware=_used(fw),
        update=_used(cell.update) if cell.update else None,
    ))  # fmt: skip
    try:
        built = build(cell, setup.cache)
    except HarnessError as exc:
        result.message = f"{cell.name}: the image could not be made: {exc}\n  artifacts: {folder}"
        result.attempts.append(Attempt(1, "failed", result.message, str(folder)))
    else:
        result.image = _image_used(cell.image.recipe_name, built.image)
        _attempts(CellRun(cell, built, setup, progress), folder, result)
    result.elapsed_s = round(time.monotonic() - start, 3)
    if sha256_of(fw.path) != fw.sha256:
        result.status = "failed"  # the harness only ever reads its inputs: say so loudly
        result.message = f"{fw.path} changed during the run (inputs must stay untouched)"
    if len(result.attempts) > 1:
        tried = "; ".join(a.line() for a in result.attempts)
        result.message = (result.message + f"\n    retried ({tried})").lstrip("\n")
    result.write(folder)
    return result


@dataclass(frozen=True)
class CellRun:
    """What every attempt at a cell shares: its plan, its built image, where it runs."""

    plan: CellPlan
    built: Built
    setup: Setup
    progress: Progress | None


def _attempts(run: CellRun, folder: Path, result: CellResult) -> None:
    for number in range(1, run.plan.policy.retries + 2):
        run_dir = attempt_folder(folder, number)
        attempt = CellAttempt(run, run_dir)
        error = attempt.run()
        result.timeline, result.booted = attempt.timeline, attempt.booted
        result.faults, result.matched = attempt.faults, attempt.matched
        result.violation = attempt.violation
        status: Status = "passed" if error is None else "failed"
        emulator = error is not None and retryable(error.__cause__)
        result.attempts.append(Attempt(number, status, str(error or ""), str(run_dir), emulator))
        if error is None:
            result.status, result.message = "passed", ""
            return
        result.message = str(error)
        if not emulator:
            return


def _used(fw: Firmware) -> FirmwareUsed:
    return FirmwareUsed(str(fw.path), fw.id, fw.sha256, fw.entry.id if fw.entry else None,
                        fw.pinned, fw.origin)  # fmt: skip


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\[\]-]+", "_", name)


class CellAttempt:
    """One attempt at one cell: what the steps see as their `Run`."""

    def __init__(self, run: CellRun, run_dir: Path) -> None:
        self.plan, self.built, self.setup, self.progress = (
            run.plan,
            run.built,
            run.setup,
            run.progress,
        )
        self.run_dir = run_dir
        self.cursor = 0
        self.booted: str | None = None
        self.timeline: list[StepRecord[Any]] = []
        self.dev: Device | None = None
        self.faults: list[FaultOutcome] = []
        self.matched: list[str] = []  # the serial lines `expect` steps matched, in order
        self.violation: Violation | None = None  # the `not_expect` that failed, first
        self.stack = contextlib.ExitStack()
        self.clock = time.monotonic()
        self.http: HttpServer | None = None  # the host's server of a networked cell

    def run(self) -> StepFailed | None:
        """Run all steps; return the failure (None when every step passed)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.stack:
            if self.plan.policy.network:  # up before the board, down with the attempt
                try:
                    self.http = self.stack.enter_context(
                        serving.serve(self.plan, self.run_dir, self.payload)
                    )
                except HarnessError as exc:  # a `serve:` file that cannot be read
                    return StepFailed(f"{self.plan.name}: the HTTP server cannot start: {exc}")
            failure = self._steps(self.plan.steps)
            self._finish(failed=failure is not None)
        return failure

    def _steps(self, steps: Sequence[StepPlan], branch: str | None = None) -> StepFailed | None:
        """Run `steps` in order up to the first failure; after a fault, the rest once per
        point (`branch`: the point these run after)."""
        for pos, step in enumerate(steps):
            record = StepRecord.of(step.kind)(index=step.number, step=step.kind, line=step.line,
                                              start_s=self.now(), branch=branch)  # fmt: skip
            self.timeline.append(record)
            if self.progress:
                self.progress(self.plan, step.index, step.kind)
            try:
                record.detail = self._step(step)
            except HarnessError as error:
                self._note_violation(error, record)
                record.status, record.elapsed_s = "failed", self._since(record)
                failure = StepFailed(self._failure(record, error))
                failure.__cause__ = error
                return failure
            record.status, record.elapsed_s = "passed", self._since(record)
            if isinstance(record.detail, Matched):
                self.matched += record.detail.lines
            self._write_timeline()
            if isinstance(record.detail, faults.Branches):
                return self._branches(record, record.detail, steps[pos + 1 :])
        return None

    def _branches(
        self, record: StepRecord[Any], branches: faults.Branches, rest: Sequence[StepPlan]
    ) -> StepFailed | None:
        """The steps after a fault, once per point, each from a power-on of the flash the
        point leaves; every point gets its outcome, the first failure is named."""
        fault = faults.fault_of(STEP_FORMATS[record.step])
        dev = self.device()
        log = dev.board.log
        first: StepFailed | None = None
        rules = list(log.forbidden)  # not_expect from before the fault holds at every point
        update = verdict.update_of([r.detail for r in self.timeline])
        known = verdict.Known.of(branches.before, update)  # the apps a verdict tells apart
        cutfile.keep(self.run_dir, record.index, branches)  # for `harness powercut export`
        points = fault.flashes(branches)
        send = getattr(points, "send", None)  # a plugin's plain iterator is taken as one
        reading = fault.reads(branches)
        seen: Seen | None = None
        while True:
            try:
                point, flash = send(seen) if send is not None else next(points)
            except StopIteration:
                break
            fault.power_on_from(dev, flash)
            reading = reading and _record_reads(dev, True)
            log.note(f"power on after `{record.step}` {point.label}")
            log.forbidden, log.violation = list(rules), None  # each point on its own
            since = self.cursor = len(log.lines)
            self.booted = None
            failure = self._steps(rest, branch=f"{record.step} {point.short}")
            outcome = self._outcome(record, point, failure, (branches.before, flash), since)
            outcome.verdict = verdict.judge(dev, known, failure and failure.__cause__)
            seen = _what_was_seen(dev, rest, flash) if reading else None  # asking it, too
            branches.outcomes.append(outcome)
            self.faults.append(outcome)
            dev.board.power_cut()
            if failure is not None and first is None:
                first = failure
        if reading:
            _record_reads(dev, False)
        chosen = {p.key: p for p in branches.points}  # as the fault named them at the end
        for outcome in branches.outcomes:
            outcome.point = chosen.get(outcome.point.key, outcome.point)
            outcome.coverage = branches.coverage
        self._write_timeline()
        if first is None:
            return None
        failed = [o for o in branches.outcomes if o.status == "failed"]
        where = f"{self.plan.scenario.path}:{record.line}"
        message = (
            f"{self.plan.name}: step {record.index} `{record.step}` ({where}): {len(failed)} "
            f"of {len(branches.outcomes)} points failed; the first, {failed[0].point.label}:\n"
            f"{first}\n  {failed[0].point.rerun}\n"
            f"{fault_table(branches.outcomes)}"
        )
        failure = StepFailed(message)
        failure.__cause__ = first.__cause__
        return failure

    def _outcome(self, fault: StepRecord[Any], point: FaultPoint, failure: StepFailed | None,
                 flashes: tuple[bytes, bytes], since: int) -> FaultOutcome:  # fmt: skip
        """What the steps after one point of the `fault` step came to; `flashes`: before
        the fault, and as the point left it."""
        dev = self.device()
        booted = self.booted
        if booted is None and dev.repl.known:  # MicroPython came up: ask it
            with contextlib.suppress(HarnessError):
                booted = dev.running_partition()
        state = formats.FlashState.of(dev.flash.read_bytes())
        message = str(failure.__cause__ or failure).splitlines()[0] if failure else ""
        counts, stretches = faults.changed(*flashes)
        return FaultOutcome(
            fault.step, fault.index, point, "failed" if failure else "passed", booted,
            state.states(), state.boot.slot, counts, log_lines(dev.board.log.lines[since:]),
            message, stretches,
        )  # fmt: skip

    def _step(self, step: StepPlan) -> object:
        args = self.plan.expand(step.args, self.runtime_vars(), ("steps", step.index))
        detail = handlers()[step.kind](self, args)
        if self.dev is not None:
            self.dev.console.check(f"step {step.number} `{step.kind}`")
        return detail

    def _since(self, record: StepRecord[Any]) -> float:
        return round(self.now() - record.start_s, 3)

    def _note_violation(self, error: BaseException, record: StepRecord[Any]) -> None:
        """A `not_expect` that failed: its rule and line, as the console recorded them."""
        seen: list[BaseException] = []
        cause: BaseException | None = error
        while cause is not None and cause not in seen and not isinstance(cause, UnexpectedOutput):
            seen.append(cause)
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, UnexpectedOutput) and self.violation is None:
            self.violation = Violation(cause.rule, cause.line, record.index)

    def runtime_vars(self) -> dict[str, str]:
        """${port}, ${rfc2217} (once the board is served), the run's files and offsets."""
        port = self.dev.board.port if self.dev is not None else None
        values = {
            "port": port.pty if port else "",
            "rfc2217": port.rfc2217 if port else "",
            "run_dir": str(self.run_dir),
            "image": str(self.built.image.path),
            "python": sys.executable,
        }
        if self.http is not None:
            base = self.http.url(serving.host(self.plan))
            values.update(http=base, url=base + serving.UPDATE_PATH)
        values.update({f"offset_{name}": f"0x{off:x}" for name, off in self.built.offsets.items()})
        for kind in self.plan.payload_vars:  # made only when a step names them
            values[payload_var(kind)] = str(self.payload(kind))
        return values

    # -- Run, as the steps see it ---------------------------------------------------------
    def boot(self) -> Device:
        if self.dev is not None:  # after a fault: on again, on the flash it left
            self.dev.power_on()
            return self.dev
        options = BootOptions(
            self.plan.policy, qemu=self.setup.qemu, run_dir=self.run_dir, serve=self.plan.serve,
            stage=tuple((s.offset, s.data) for s in self.built.staging.values()),
            record_flash=self.plan.record_flash,
        )  # fmt: skip
        self.dev = self.stack.enter_context(boot(self.built.image.path, options))
        if self.http is not None:  # requests timed as the serial log's lines are
            self.http.count_from(self.dev.board.log.started)
        _flash_summary(self.run_dir, "before", self.dev.flash)
        return self.dev

    def server(self) -> HttpServer:
        if self.http is None:
            raise StepFailed("no HTTP server: this cell has no network (requires: [network])")
        return self.http

    def device(self) -> Device:
        if self.dev is None:  # the format rejects this order; kept for API users
            raise StepFailed("no device: this step needs a `boot` step before it")
        return self.dev

    def staged_slot(self, payload: str) -> str:
        return self.built.staging[payload].target

    def payload(self, name: str) -> Path:
        return payload_path(self.plan, name, self.setup.cache)

    def host_path(self, name: str) -> Path:
        return self.plan.scenario.path.parent / name

    def inspect_target(self, name: str) -> Path:
        if images.is_payload(name):
            return self.payload(name)
        if name == "image":
            return self.built.image.path
        if name == "flash":
            return self.device().flash
        if name == "firmware":
            return self.plan.firmware.path
        return self.host_path(name)

    def now(self) -> float:
        return round(time.monotonic() - self.clock, 3)

    # -- evidence -----------------------------------------------------------------------
    def _failure(self, record: StepRecord[Any], exc: HarnessError) -> str:
        where = f"{self.plan.scenario.path}:{record.line}"
        tail = ""
        if self.dev is not None and "serial log" not in str(exc):
            tail = "\n  last serial lines:\n" + self.dev.console.log.last_lines()
        return (
            f"{self.plan.name}: step {record.index} `{record.step}` ({where}) failed: {exc}"
            f"{tail}\n  artifacts: {self.run_dir}"
        )

    def _finish(self, failed: bool) -> None:
        if self.dev is not None:
            with contextlib.suppress(OSError, HarnessError):
                _flash_summary(self.run_dir, "after", self.dev.flash, since=self.built.image.path)
        self._write_timeline()
        self.stack.close()  # QEMU is reaped here, before the flash file is judged
        flash = self.run_dir / "flash.bin"
        if not failed and not self.setup.keep_flash and flash.exists():
            flash.unlink()  # 4-16 MB per cell; kept only as evidence of a failure

    def _write_timeline(self) -> None:
        write_timeline(self.run_dir, self.timeline)


# steps that read the flash only through the guest (whose reads the board traces); the
# host reads otadata and the table for the otadata steps, and anything for the others
GUEST_READS_ONLY = frozenset({"boot", "expect", "not_expect", "repl", "put", "reset",
                              "assert_booted"})  # fmt: skip
OTADATA_READS = frozenset({"assert_otadata", "write_otadata"})


def _record_reads(dev: Device, on: bool) -> bool:
    """Have the board trace what its power-ons read; False where it cannot."""
    try:
        dev.board.record_reads(on)
    except FlashTraceUnavailable as exc:
        dev.board.log.note(f"what the power-ons read is not traced ({exc}): every state is "
                           "booted")  # fmt: skip
        return False
    return True


def _what_was_seen(dev: Device, steps: Sequence[StepPlan], flash: bytes) -> Seen | None:
    """What the power-on from `flash` and the `steps` after it read of the flash (what
    the guest read, as the board traced it, and what the host read for the steps that
    look at the flash file themselves) and the operations the guest made. None: unknown."""
    try:
        seen = dev.board.seen()
    except HarnessError:
        return None
    read = seen.reads
    kinds = {step.kind for step in steps} - GUEST_READS_ONLY
    if kinds - OTADATA_READS:  # the host read it: every byte counts
        return Seen(ReadSet.of([(0, len(flash))]), seen.writes)
    if kinds:
        table = formats.parse_table(flash)
        where = [(formats.TABLE_OFFSET, formats.TABLE_OFFSET + formats.SECTOR)]
        if table.otadata is not None:
            where.append((table.otadata.offset, table.otadata.offset + table.otadata.size))
        read = read | ReadSet.of(where)
    return Seen(read, seen.writes)


def _image_used(name: str, built: BuiltImage) -> ImageUsed:
    fs = built.filesystem
    where = None
    if fs is not None:
        how = "in the table" if fs.in_table else "made at boot after the last partition"
        where = f"{fs.label} at {fs.offset:#x}, {fs.size:#x} bytes ({how})"
    return ImageUsed(name, built.conversion, list(built.notes), where)


def _flash_summary(folder: Path, when: When, flash: Path, since: Path | None = None) -> None:
    """The flash's table, otadata and boot choice (after: and what the run wrote), read
    once: 16 MB."""
    before = since.read_bytes() if since is not None else None
    FlashSummary.of(flash.read_bytes(), before).write(folder, when)
