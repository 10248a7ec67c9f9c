"""The points of `power_cut` with `sweep: all`: every distinct flash state of the
recorded step, booted or placed in the class of a booted state whose power-on read the
same bytes (harness.flash.distinct), with the torn states inside each operation
(`torn: true`, harness.flash.torn) and the cuts of what each booted power-on wrote
(`depth: 2`); and the coverage line every power-cut result carries.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..flash import distinct, formats, torn
from ..flash.ops import FlashOp, where
from .results import FaultPoint

if TYPE_CHECKING:
    from .faults import Flashes
    from .powercut import Recorded


@dataclass(frozen=True)
class CutClass:
    """States a power-on cannot tell apart (`sweep: all`): the one booted, and what the
    class holds, as operation counts."""

    rep: int  # the point booted: operations done
    states: int  # distinct states in the class, the rep's included
    operations: list[tuple[int, int]]  # (first, last) runs of the operation counts it holds
    read: int  # bytes the rep's power-on read (-1: not traced, the class is the rep alone)
    torn: int = 0  # torn states in the class
    torn_in: list[tuple[int, int]] = field(default_factory=list)  # their operations, as runs


@dataclass(frozen=True)
class SecondClass:
    """Second cuts (`depth: 2`) that a power-on cannot tell apart: of the operations the
    power-on from the first cut `first` made, the cuts `cuts` (operations done, -k:
    inside operation k), covered by the power-on of point `booted` (`first` itself when
    they read the same as it)."""

    first: int  # point keys
    booted: int
    cuts: list[int]


SECOND = 10**9  # a second cut's point key: from here up, in the order they were booted
Tear = Callable[[bytes, FlashOp, int], bytes] | None


def _tear(seed: int | None, depth: int) -> Tear:
    """The torn state inside an operation (its number, from 1), drawn by `seed`."""
    if seed is None:
        return None
    return lambda old, op, number: torn.torn(old, op, torn.rng_for(seed, number, depth))


def every_state(recorded: Recorded, point_of: Callable[[int], FaultPoint]) -> Flashes:
    """Every distinct state: boot those no earlier power-on covers, learn what each read
    (and, `depth: 2`, cut what it wrote the same way), and name each class's states on
    its point."""
    reduction = distinct.Reduction()
    walk = distinct.reduce(recorded.before, recorded.ops, reduction, _tear(recorded.seed, 1))
    covers: dict[int, str] = {}  # second cuts: point key -> what it stands for
    sent: distinct.ReadSet | None = None
    while True:
        try:
            n, flash = walk.send(sent)
        except StopIteration:
            break
        point = point_of(n)
        recorded.points.append(point)
        seen = yield point, flash
        sent = seen.reads if seen is not None and recorded.by_reads else None
        if recorded.depth == 2 and seen is not None and seen.writes:
            second = yield from _second_cuts(recorded, point, flash, seen, covers)
            sent = sent and second  # a state joins only if its second cuts would too
    held: dict[int, list[int]] = {i: [] for i in range(len(reduction.classes))}
    for n, index in enumerate(reduction.class_of):
        held[index].append(n)
    recorded.classes = [
        CutClass(c.rep, sum(n >= 0 for n in c.states), distinct.runs(held[i]), c.read,
                 sum(n < 0 for n in c.states), distinct.runs(-n for n in c.states if n < 0))
        for i, c in enumerate(reduction.classes)
    ]  # fmt: skip
    covers |= {c.rep: _covers(c, held[i]) for i, c in enumerate(recorded.classes)}
    recorded.points = [replace(p, covers=covers.get(p.key, "")) for p in recorded.points]
    recorded.distinct, recorded.torn = reduction.distinct, reduction.torn
    recorded.coverage = coverage_line(recorded)


Second = Generator[tuple[FaultPoint, bytes], distinct.Seen | None, distinct.ReadSet | None]


def _second_cuts(
    recorded: Recorded, first: FaultPoint, flash: bytes, seen: distinct.Seen, covers: dict[int, str]
) -> Second:
    """The power-on from `first` wrote `seen.writes`: cut those too, as the step's own
    (their distinct and torn states, reduced by what each power-on read). Returns every
    byte those power-ons read with what `first`'s read: a state of `first`'s class that
    agrees with it there makes the same writes, and its second cuts agree with these on
    every byte their power-ons read (None: unknown)."""
    writes = list(seen.writes)
    into = distinct.Reduction()
    walk = distinct.reduce(flash, writes, into, _tear(recorded.seed, 2))
    table = formats.with_fs_region(formats.parse_table(flash), len(flash))
    union: distinct.ReadSet | None = seen.reads
    sent: distinct.ReadSet | None = None
    keys: dict[int, int] = {}  # the second walk's point -> the point key booted for it
    while True:
        try:
            m, after = walk.send(sent)
        except StopIteration:
            break
        if m == 0:  # the first power-on itself: what it read is known
            sent = seen.reads if recorded.by_reads else None
            continue
        point = _second_point(first, writes, table, m, len(recorded.points))
        keys[m] = point.key
        recorded.points.append(point)
        again = yield point, after
        sent = again.reads if again is not None and recorded.by_reads else None
        union = union | sent if union is not None and sent is not None else None
    recorded.second += into.distinct - 1 + into.torn
    recorded.second_ops += len(writes)
    for index, c in enumerate(into.classes):
        cuts = [m for m, i in enumerate(into.class_of) if i == index] + [n for n in c.states
                                                                        if n < 0]  # fmt: skip
        recorded.second_classes.append(SecondClass(first.key, keys.get(c.rep, first.key), cuts))
    for c in into.classes:
        if c.rep in keys:
            held = len(c.states)
            covers[keys[c.rep]] = (f"{held:,} second-cut state{'s' * (held != 1)} of the "
                                   f"{len(writes):,} operations the power-on from "
                                   f"{first.short} made")  # fmt: skip
    return union


def _second_point(first: FaultPoint, writes: Sequence[FlashOp], table: formats.PartitionTable,
                  m: int, count: int) -> FaultPoint:  # fmt: skip
    """The second cut after `m` of `writes` (-m: inside operation m, torn)."""
    k = abs(m)
    op = writes[k - 1]
    inside = m < 0
    short = f"{first.short}+{k}{'~' if inside else ''}/{len(writes)}"
    how = (f"inside operation {k}, torn as the {torn.MODEL}" if inside
           else f"after operation {k}")  # fmt: skip
    label = (f"{how} of the {len(writes)} that the power-on after cut {first.short} made "
             f"({where(op, table)}): a second cut")  # fmt: skip
    did = f"second cut {'inside' if inside else 'after'} {where(op, table)}"
    return FaultPoint(SECOND + count, short, label, did, op.offset,
                      "a second cut: rerun the sweep (`depth: 2`)")  # fmt: skip


def _covers(c: CutClass, held: list[int]) -> str:
    """`412 states, operations 3-2,301 (and 5 torn states)`: what a class holds."""
    text = f"{c.states:,} state{'s' * (c.states != 1)}"
    if held:
        text += f", operations {distinct.runs_text(held)}"
    if c.torn:
        text += f" (and {c.torn:,} torn state{'s' * (c.torn != 1)})"
    return text


def coverage_line(recorded: Recorded) -> str:
    """`22,752 operations, 310 distinct states, 9 power-ons, every state covered`."""
    booted = len(recorded.points)
    head = (f"{recorded.of:,} operations, {recorded.distinct:,} distinct states, "
            f"{booted:,} power-on{'s' * (booted != 1)}")  # fmt: skip
    if recorded.every:
        states = recorded.distinct + recorded.torn + recorded.second
        same = states - booted
        how = (f" ({booted:,} booted, {same:,} read the same as a booted one by every byte "
               "its power-on read)" if same else "")  # fmt: skip
        if recorded.seed is not None:
            head += (f", {recorded.torn:,} torn states (seed {recorded.seed}; the "
                     f"{torn.MODEL})")  # fmt: skip
        if recorded.depth == 2:
            head += (f", second cuts: {recorded.second:,} states of the {recorded.second_ops:,} "
                     "operations the booted power-ons made")  # fmt: skip
        return f"{head}, every state covered{how}"
    return sampled(recorded)


def sampled(recorded: Recorded) -> str:
    keys = [p.key for p in recorded.points]
    if recorded.of == 0:
        return "cut between steps: 1 state, 1 power-on, every state covered"
    booted = len(keys)
    return (f"{recorded.of:,} operations, {recorded.distinct:,} distinct states, {booted:,} "
            f"power-on{'s' * (booted != 1)}, sampled: the states after operations "
            f"{distinct.runs_text(keys, most=12)} (`sweep: all` covers every state)")  # fmt: skip
