"""A power cut during a step: one `Fault` (harness.scenario.faults). Record the step's
flash operations once, then power on from the flash as it stood after each cut point.

A cut point costs one power-on, not one update: the interrupted step runs once with the
flash chip's operations recorded (harness.emulator.flashtrace), the board loses power
at the end of it, and for each point the flash is rebuilt on the host as the chip left
it after that many operations (harness.flash.ops), written into the board's flash file,
and the steps after the cut run from a power-on of it. tests/test_powercut.py shows that
a rebuilt flash equals the one a live cut at the same operation leaves.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

from pydantic import Field

from ..errors import FlashTraceUnavailable, StepFailed
from ..flash import distinct, formats, torn
from ..flash.ops import FlashOp, partition_at, states, where
from .everystate import CutClass, SecondClass, every_state, sampled
from .faults import Branches, Fault, Flashes
from .results import FaultPoint
from .stepformats import Args, OtaArgs, PowerCutArgs
from .steps import Run, handlers

# regions `within:` can name besides the table's partitions (harness.flash.ops.partition_at)
OUTSIDE_PARTITIONS = ("bootloader", "partition table")


@dataclass(kw_only=True)
class Recorded(Branches):
    """The power_cut step's detail: what was recorded, and (from `Branches`) its points
    and each point's outcome."""

    by: Literal["operations", "time"] = "operations"
    of: int  # the step's flash operations (cut by time: its milliseconds)
    why: str = ""  # why by time
    interrupted: object = None  # the interrupted step's own detail (None: cut between steps)
    distinct: int = 0  # distinct flash states the operations pass through (0 included)
    every: bool = False  # `sweep: all`: every distinct state, booted or in a booted one's class
    by_reads: bool = False  # ... a state joins a booted one's class by what its power-on read
    seed: int | None = None  # `torn: true`: the seed torn states are drawn by (None: none)
    torn: int = 0  # the torn states covered (one inside each operation that changes a bit)
    depth: int = 1  # 2: the power-ons' own operations cut too
    second: int = 0  # second-cut states covered (distinct and torn)
    second_ops: int = 0  # the operations the power-ons made that were cut
    second_classes: list[SecondClass] = field(default_factory=list)
    classes: list[CutClass] = field(default_factory=list)
    # the step's operations, and (cut by time) the flash each live cut left by its
    # moment in ms: for the run, kept out of timeline.json
    ops: Annotated[list[FlashOp], Field(exclude=True)] = field(default_factory=list, repr=False)
    found: Annotated[dict[int, bytes], Field(exclude=True)] = field(default_factory=dict,
                                                                     repr=False)  # fmt: skip


@dataclass(frozen=True)
class Cut:
    """The power went after `after` of the step's `of` flash operations (or, by time,
    `after` ms into a step of `of` ms)."""

    after: int
    of: int
    last: str = ""  # the last operation done before the power went ("" when none was)
    next: str = ""  # the operation the cut stopped ("" when all were done)
    offset: int = -1  # where the operation the cut stopped (or the last one) was
    why: str = ""  # cut by time, and why ("" when by operations)
    torn: bool = False  # the cut came inside operation `after + 1` (`next`), torn by a model

    def point(self) -> FaultPoint:
        """The cut as a fault point: its place, in a sentence, and how to rerun it."""
        if self.why:
            short = f"{self.after / 1000:.2f} s/{self.of / 1000:.2f} s"
            label = (f"{self.after / 1000:.2f} s into the step of {self.of / 1000:.2f} s (cut "
                     f"by time: {self.why})")  # fmt: skip
            rerun = "a cut by time lands where the host's speed puts it: rerun the sweep"
            return FaultPoint(self.after, short, label, f"by time, {self.why}", rerun=rerun)
        if self.torn:
            k = self.after + 1
            return FaultPoint(-k, f"{k}~/{self.of}", f"inside operation {k} of {self.of} "
                              f"({self.next}), torn as the {torn.MODEL}", f"torn {self.next}",
                              self.offset, "a torn state is drawn by the seed: rerun the "
                              "sweep with the same `seed`")  # fmt: skip
        if self.of == 0:
            label = "now, between steps"
        elif self.after == 0:
            label = f"before operation 1 of {self.of} ({self.next})"
        elif self.after == self.of:
            label = f"after the last of {self.of} operations ({self.last})"
        else:
            label = f"after operation {self.after} of {self.of} ({self.last}; next: {self.next})"
        did = (f"before {self.next}" if self.next else f"after {self.last}" if self.last
               else "between steps")  # fmt: skip
        return FaultPoint(self.after, f"{self.after}/{self.of}", label, did, self.offset,
                          f"rerun just that point with `at: [{self.after}]`")  # fmt: skip


class PowerCut(Fault[PowerCutArgs, Recorded]):
    """The power goes after chosen flash operations of a step (or now, between steps)."""

    def record(self, run: Run, args: PowerCutArgs) -> Recorded:
        """Run the interrupted step once with the flash chip's operations recorded, then
        cut the power. An `ota` step stops before its reboot: the power-on after a cut
        is it."""
        return record(run, args)

    def choose(self, args: PowerCutArgs, recorded: Recorded) -> list[FaultPoint]:
        if recorded.by == "time":
            return [Cut(ms, recorded.of, why=recorded.why).point() for ms in sorted(recorded.found)]
        if args.interrupted is None:  # cut now: one point, after nothing
            recorded.distinct = 1
            return [Cut(0, 0).point()]
        ops = recorded.ops
        table = formats.with_fs_region(formats.parse_table(recorded.before), len(recorded.before))
        if args.sweep in ("all", "distinct"):  # chosen as the power-ons go (`flashes`)
            recorded.every, recorded.by_reads = True, args.sweep == "all"
            recorded.seed = args.seed if args.torn else None
            recorded.depth = args.depth
            cut_points(args, ops, table)  # a step with no operations: said now
            return []
        points = cut_points(args, ops, table)
        recorded.distinct = len(distinct.distinct_points(recorded.before, ops))
        return [_cut(ops, table, n).point() for n in points]

    def reads(self, recorded: Recorded) -> bool:
        return recorded.by_reads or recorded.depth == 2

    def flashes(self, recorded: Recorded) -> Flashes:
        """Each point's flash: found by a live cut (by time), else rebuilt in one pass;
        for `sweep: all`, each distinct state that agrees with no state booted so far on
        the bytes its power-on read (harness.flash.distinct)."""
        points = {p.key: p for p in recorded.points}
        if recorded.by == "time":
            yield from ((points[ms], recorded.found[ms]) for ms in sorted(recorded.found))
            recorded.coverage = f"cut by time: {len(points)} moments, {len(points)} power-ons"
            return
        if recorded.every:
            yield from every_state(recorded, lambda n: _point(recorded, n))
            return
        built = states(recorded.before, recorded.ops, list(points))
        yield from ((points[n], flash) for n, flash in built)
        recorded.coverage = sampled(recorded)


def _cut(ops: Sequence[FlashOp], table: formats.PartitionTable, n: int) -> Cut:
    """The cut after `n` of `ops`."""
    return Cut(n, len(ops), where(ops[n - 1], table) if n else "",
               where(ops[n], table) if n < len(ops) else "",
               ops[min(n, len(ops) - 1)].offset)  # fmt: skip


def _point(recorded: Recorded, n: int) -> FaultPoint:
    """The point after `n` of the recorded operations (-k: torn inside operation k)."""
    ops = recorded.ops
    table = formats.with_fs_region(formats.parse_table(recorded.before), len(recorded.before))
    return (_cut(ops, table, n) if n >= 0
            else replace(_cut(ops, table, -n - 1), torn=True)).point()  # fmt: skip


def record(run: Run, args: PowerCutArgs) -> Recorded:
    """The interrupted step, run once with the flash chip's operations recorded; the
    power cut at its end."""
    dev = run.device()
    board = dev.board
    step = args.interrupted
    if step is None:  # cut now
        board.pause()
        before = dev.flash.read_bytes()
        board.power_cut()
        return Recorded(of=0, before=before)
    if isinstance(step, OtaArgs):
        step = step.cut_before_reboot()

    def do(step: Args) -> object:
        return handlers()[step.KIND](run, step)

    if args.by == "time":
        return _by_time(run, args, step, do, "as asked (`by: time`)")
    try:
        trace = board.record_flash(True)
    except FlashTraceUnavailable as exc:
        return _by_time(run, args, step, do, str(exc))
    before = dev.flash.read_bytes()
    try:
        detail = do(step)
    except BaseException:
        with contextlib.suppress(Exception):  # the step's own error is the one to report
            board.power_cut()
        raise
    board.pause()  # the flash writes in flight reach the file, the trace its lines
    board.record_flash(False)
    ops = trace.ops(len(before))
    board.power_cut()
    return Recorded(of=len(ops), interrupted=detail, before=before, ops=ops)


def _by_time(run: Run, args: PowerCutArgs, step: Args, do: Callable[[Args], object],
             why: str) -> Recorded:  # fmt: skip
    """Cut by time: the step once, whole, for its duration; then, for each of K moments
    spread over it, a power-on of the flash before it, the step again, and the power cut
    that moment. Each point is the flash that cut left, as found."""
    dev = run.device()
    board = dev.board
    before = dev.flash.read_bytes()
    start = time.monotonic()
    detail = do(step)
    took = time.monotonic() - start
    board.pause()
    found = {round(took * 1000): dev.flash.read_bytes()}
    board.power_cut()
    assert isinstance(args.sweep, int)  # the format makes `by: time` take a sweep: K
    for j in range(1, args.sweep + 1):
        at = took * j / (args.sweep + 1)
        dev.flash.write_bytes(before)
        dev.power_on()
        dev.wait_prompt(60)
        runner = threading.Thread(target=_quietly, args=(do, step), daemon=True)
        runner.start()
        time.sleep(at)
        board.pause()
        found[round(at * 1000)] = dev.flash.read_bytes()
        board.power_cut()
        runner.join(30)
    return Recorded(by="time", of=round(took * 1000), why=why, interrupted=detail,
                    before=before, found=found)  # fmt: skip


def _quietly(do: Callable[[Args], object], step: Args) -> None:
    """The step of a live cut: it fails when the power goes, which is the point."""
    with contextlib.suppress(Exception):
        do(step)


def cut_points(
    args: PowerCutArgs, ops: Sequence[FlashOp], table: formats.PartitionTable
) -> list[int]:
    """The cut points (operations done before the power goes), in order."""
    total = len(ops)
    if total == 0:
        kind = args.interrupted.KIND if args.interrupted else "?"
        raise StepFailed(f"the interrupted `{kind}` step made no flash operations: there is "
                         "nothing to cut")  # fmt: skip
    if args.at is not None:
        past = [n for n in args.at if n > total]
        if past:
            raise StepFailed(
                f"cut point {past[0]} is past the step's last flash operation: it made "
                f"{total} (points go from 0, before the first, to {total})"
            )
        return sorted(set(args.at))
    if args.within is not None:
        return _within(args.within, ops, table)
    if args.sweep in ("all", "distinct"):  # chosen as the power-ons go (PowerCut.flashes)
        return []
    assert isinstance(args.sweep, int)
    spread = {round(j * total / (args.sweep + 1)) for j in range(1, args.sweep + 1)}
    # the boundaries: before the first write, after the last; before otadata is touched
    # and after each of its operations (half-written, then switched)
    otadata = _on(ops, table, table.otadata.name) if table.otadata else []
    edges = {0, total} | ({otadata[0]} | {i + 1 for i in otadata} if otadata else set())
    return sorted(spread | edges)


def _within(name: str, ops: Sequence[FlashOp], table: formats.PartitionTable) -> list[int]:
    """The points where partition `name` is half-written: after each of its operations
    but the last (programs of 0xff bytes, which change nothing, left out)."""
    if table.get(name) is None and name not in OUTSIDE_PARTITIONS:
        raise StepFailed(f"within: the image has no partition {name!r} (it has "
                         f"{', '.join([*table.names(), *OUTSIDE_PARTITIONS])})")  # fmt: skip
    on = [i for i in _on(ops, table, name) if not ops[i].changes_nothing]
    if len(on) < 2:
        raise StepFailed(f"the step made {len(on)} flash operation(s) on {name} ({len(ops)} in "
                         "all): no point leaves it half-written")  # fmt: skip
    return [i + 1 for i in on[:-1]]


def _on(ops: Sequence[FlashOp], table: formats.PartitionTable, name: str) -> list[int]:
    """The indexes (from 0) of the operations on partition `name`."""
    return [i for i, op in enumerate(ops) if partition_at(table, op.offset) == name]
