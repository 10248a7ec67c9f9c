"""A power cut during a step: record the step's flash operations once, then power on
from the flash as it stood after each cut point.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field

from ..emulator.device import Device
from ..errors import FlashTraceUnavailable, StepFailed
from ..flash import formats
from ..flash.ops import FlashOp, changed_stretches, partition_at, states, where
from .results import CutOutcome, CutPoint, cut_table
from .stepformats import Args, OtaArgs, PowerCutArgs

# regions `within:` can name besides the table's partitions (harness.flash.ops.partition_at)
OUTSIDE_PARTITIONS = ("bootloader", "partition table")


@dataclass
class Recorded:
    """The power_cut step's detail: the recording, its points, and each point's outcome."""

    operations: int
    points: list[CutPoint]
    interrupted: object  # the interrupted step's own detail (None: cut between steps)
    # the flash before the step and its operations: for the run, kept out of timeline.json
    before: Annotated[bytes, Field(exclude=True)] = field(default=b"", repr=False)
    ops: Annotated[list[FlashOp], Field(exclude=True)] = field(default_factory=list, repr=False)
    outcomes: list[CutOutcome] = field(default_factory=list)
    # cut by time: the flash each live cut left, by point (`after`, in ms)
    flashes: Annotated[dict[int, bytes], Field(exclude=True)] = field(default_factory=dict,
                                                                        repr=False)  # fmt: skip

    def states(self) -> Iterator[tuple[int, bytes]]:
        """(point, the flash as the cut left it), in order."""
        if self.flashes:
            yield from sorted(self.flashes.items())
        else:
            yield from states(self.before, self.ops, [p.after for p in self.points])

    def summary(self) -> str:
        return cut_table(self.outcomes)


def record(dev: Device, args: PowerCutArgs, do: Callable[[Args], object]) -> Recorded:
    """Run the interrupted step once with the flash chip's operations recorded, then cut
    the power. An `ota` step stops before its reboot: the power-on after a cut is it."""
    board = dev.board
    step = args.interrupted
    if step is None:  # cut now: one point, after nothing
        board.pause()
        before = dev.flash.read_bytes()
        board.power_cut()
        return Recorded(0, [CutPoint(0, 0, "", "")], None, before, [])
    if isinstance(step, OtaArgs):
        step = step.cut_before_reboot()
    if args.by == "time":
        return _by_time(dev, args, step, do, "as asked (`by: time`)")
    try:
        trace = board.record_flash(True)
    except FlashTraceUnavailable as exc:
        return _by_time(dev, args, step, do, str(exc))
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
    table = formats.with_fs_region(formats.parse_table(before), len(before))
    chosen = choose(args, ops, table)
    points = [CutPoint(n, len(ops), where(ops[n - 1], table) if n else "",
                       where(ops[n], table) if n < len(ops) else "",
                       offset=ops[min(n, len(ops) - 1)].offset) for n in chosen]  # fmt: skip
    return Recorded(len(ops), points, detail, before, ops)


def _by_time(dev: Device, args: PowerCutArgs, step: Args, do: Callable[[Args], object],
             why: str) -> Recorded:  # fmt: skip
    """Cut by time: the step once, whole, for its duration; then, for each of K moments
    spread over it, a power-on of the flash before it, the step again, and the power cut
    that moment. Each point is the flash that cut left, as found."""
    board = dev.board
    before = dev.flash.read_bytes()
    start = time.monotonic()
    detail = do(step)
    took = time.monotonic() - start
    board.pause()
    flashes = {round(took * 1000): dev.flash.read_bytes()}
    board.power_cut()
    assert args.sweep is not None  # the format makes `by: time` take a sweep
    for j in range(1, args.sweep + 1):
        at = took * j / (args.sweep + 1)
        dev.flash.write_bytes(before)
        dev.power_on()
        dev.wait_prompt(60)
        runner = threading.Thread(target=_quietly, args=(do, step), daemon=True)
        runner.start()
        time.sleep(at)
        board.pause()
        flashes[round(at * 1000)] = dev.flash.read_bytes()
        board.power_cut()
        runner.join(30)
    total = round(took * 1000)
    points = [CutPoint(ms, total, "", "", by="time", why=why) for ms in sorted(flashes)]
    return Recorded(0, points, detail, before, [], flashes=flashes)


def _quietly(do: Callable[[Args], object], step: Args) -> None:
    """The step of a live cut: it fails when the power goes, which is the point."""
    with contextlib.suppress(Exception):
        do(step)


def choose(args: PowerCutArgs, ops: Sequence[FlashOp], table: formats.PartitionTable) -> list[int]:
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
    assert args.sweep is not None
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


def changed(before: bytes, after: bytes) -> tuple[dict[str, int], list[tuple[int, int]]]:
    """Sectors that differ: counted per partition, and as (offset, length) stretches."""
    table = formats.with_fs_region(formats.parse_table(before), len(before))
    runs = changed_stretches(before, after, table)
    counts: dict[str, int] = {}
    for name, _, length in runs:
        counts[name] = counts.get(name, 0) + length // formats.SECTOR
    return counts, [(offset, length) for _, offset, length in runs]
