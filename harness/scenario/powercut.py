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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..emulator.device import Device
from ..errors import StepFailed
from ..flash import formats
from ..flash.ops import FlashOp, changed_sectors, partition_at, where
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
    before: bytes = field(repr=False, metadata={"json": False})  # kept out of timeline.json
    ops: list[FlashOp] = field(repr=False, metadata={"json": False})
    outcomes: list[CutOutcome] = field(default_factory=list)

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
    trace = board.record_flash(True)
    before = dev.flash.read_bytes()
    if isinstance(step, OtaArgs) and step.method == "harness":
        step = step.model_copy(update={"reboot": False})
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
                       where(ops[n], table) if n < len(ops) else "") for n in chosen]  # fmt: skip
    return Recorded(len(ops), points, detail, before, ops)


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


def changed(before: bytes, after: bytes) -> dict[str, int]:
    """Sectors that differ, counted per partition."""
    table = formats.with_fs_region(formats.parse_table(before), len(before))
    counts: dict[str, int] = {}
    for offset in changed_sectors(before, after):
        name = partition_at(table, offset)
        counts[name] = counts.get(name, 0) + 1
    return counts
