"""The distinct flash states a recorded step passes through, and the classes of them that
a power-on cannot tell apart.

Only the flash survives a power cut, so two cuts that leave the same flash are one test,
and an operation that changes no byte (a program of bits already 0, an erase of an
erased sector) adds no state. `Walk` follows the operations one at a time and keeps a
fingerprint of the flash: the XOR of a hash of each sector (keyed by its number) that an
operation has touched, updated only for the sectors an operation touches, so a state is
new when its fingerprint was not seen before.

A power-on from a state reads some bytes of the flash (a `ReadSet`: the flash chip's
byte reads, and every 64 KB page the cache MMU maps). A later state that agrees with it
on every one of those bytes is, to that power-on, the same flash: it would read the
same values, so run the same code to the same end. `reduce` walks the distinct states in
order and boots only those that agree with no earlier booted state (a `Rep`) on the bytes
that state's power-on read; each state joins the class of one that it agrees with.
Exact: nothing is sampled, and nothing is assumed about the firmware.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field

from . import formats
from .ops import FlashOp, apply

SECTOR = formats.SECTOR


@dataclass(frozen=True)
class ReadSet:
    """The flash bytes a power-on read: [start, end) spans, sorted and merged."""

    spans: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, spans: Iterable[tuple[int, int]]) -> ReadSet:
        merged: list[tuple[int, int]] = []
        for start, end in sorted(s for s in spans if s[1] > s[0]):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return cls(tuple(merged))

    @classmethod
    def of_bytes(cls, addresses: Iterable[int]) -> ReadSet:
        return cls.of((a, a + 1) for a in set(addresses))

    def __or__(self, other: ReadSet) -> ReadSet:
        return ReadSet.of((*self.spans, *other.spans))

    @property
    def size(self) -> int:
        return sum(end - start for start, end in self.spans)

    def by_sector(self) -> dict[int, tuple[tuple[int, int], ...]]:
        """Sector number -> the spans read in it (clipped to the sector)."""
        out: dict[int, list[tuple[int, int]]] = {}
        for start, end in self.spans:
            for sector in range(start // SECTOR, (end - 1) // SECTOR + 1):
                lo, hi = max(start, sector * SECTOR), min(end, (sector + 1) * SECTOR)
                out.setdefault(sector, []).append((lo, hi))
        return {s: tuple(v) for s, v in out.items()}


@dataclass(frozen=True)
class Seen:
    """What a power-on read of the flash, and the operations it made on it."""

    reads: ReadSet
    writes: tuple[FlashOp, ...] = ()


class Walk:
    """The flash through a step's operations, one at a time, with its fingerprint."""

    def __init__(self, before: bytes, ops: Sequence[FlashOp]) -> None:
        self.flash = bytearray(before)
        self.ops = ops
        self.done = 0  # operations applied
        self.fingerprint = 0  # XOR over touched sectors of hash(now) ^ hash(before)
        self._hash: dict[int, int] = {}  # sector -> hash of its content now
        self._before: dict[int, int] = {}  # sector -> hash of its content before the step
        self.seen = {0}

    def _sector_hash(self, sector: int) -> int:
        data = self.flash[sector * SECTOR : (sector + 1) * SECTOR]
        key = sector.to_bytes(4, "little")
        return int.from_bytes(hashlib.blake2b(data, digest_size=16, key=key).digest(), "little")

    def step(self) -> tuple[bool, range]:
        """Apply the next operation: (whether the flash is now a state not seen before,
        the sectors it touched)."""
        op = self.ops[self.done]
        end = op.offset + op.length
        old = bytes(self.flash[op.offset : end])
        touched = range(op.offset // SECTOR, (end - 1) // SECTOR + 1)
        for sector in touched:
            if sector not in self._hash:
                self._hash[sector] = self._before[sector] = self._sector_hash(sector)
        apply(self.flash, op)
        self.done += 1
        if self.flash[op.offset : end] == old:  # changed no byte: no new state
            return False, touched
        for sector in touched:
            now = self._sector_hash(sector)
            self.fingerprint ^= self._hash[sector] ^ now
            self._hash[sector] = now
        new = self.fingerprint not in self.seen
        self.seen.add(self.fingerprint)
        return new, touched


def distinct_points(before: bytes, ops: Sequence[FlashOp]) -> list[int]:
    """The operation counts after which the flash is a state not seen before (0, the
    flash before the step, first), in order."""
    walk, points = Walk(before, ops), [0]
    while walk.done < len(ops):
        new, _ = walk.step()
        if new:
            points.append(walk.done)
    return points


@dataclass
class Rep:
    """A booted state: the bytes its power-on read, as they were, and where the walk's
    flash now differs from them."""

    point: int  # operations done
    index: int  # its class, in `Reduction.classes`
    reads: dict[int, tuple[tuple[int, int], ...]]  # sector -> spans read
    saved: dict[int, bytes]  # sector -> the read bytes then, concatenated
    differs: set[int] = field(default_factory=set)  # sectors whose read bytes differ now

    @classmethod
    def of(cls, point: int, index: int, reads: ReadSet, flash: bytearray) -> Rep:
        spans = reads.by_sector()
        return cls(point, index, spans, {s: _gather(flash, v) for s, v in spans.items()})

    def agrees(self, flash: bytearray, sectors: Iterable[int]) -> bool:
        """`flash` has the bytes this rep's power-on read in `sectors`, as they were."""
        return all(_gather(flash, self.reads[s]) == self.saved[s] for s in sectors
                   if s in self.reads)  # fmt: skip

    def update(self, flash: bytearray, touched: Iterable[int]) -> None:
        for sector in touched:
            spans = self.reads.get(sector)
            if spans is None:
                continue
            if _gather(flash, spans) == self.saved[sector]:
                self.differs.discard(sector)
            else:
                self.differs.add(sector)


def _gather(flash: bytearray, spans: Iterable[tuple[int, int]]) -> bytes:
    return b"".join(flash[a:b] for a, b in spans)


@dataclass
class CutClass:
    """States that a power-on cannot tell apart: the one booted (`rep`), and the states
    that joined it (the rep first): operation counts, and -k for the state torn inside
    operation k."""

    rep: int
    states: list[int]
    read: int  # bytes the rep's power-on read (-1: unknown, the class is the rep alone)


@dataclass
class Reduction:
    """What `reduce` came to: the classes in the order their reps were booted, the
    distinct states (and torn ones), and each operation count's class (its index in
    `classes`)."""

    classes: list[CutClass] = field(default_factory=list)
    distinct: int = 0
    torn: int = 0
    class_of: list[int] = field(default_factory=list)  # per operation count 0..len(ops)


Tear = Callable[[bytes, FlashOp, int], bytes]  # (old bytes, op, its number) -> torn bytes


Visits = Generator[tuple[int, bytes], ReadSet | None, None]


def reduce(
    before: bytes, ops: Sequence[FlashOp], into: Reduction, tear: Tear | None = None
) -> Visits:
    """Yield (operations done, flash) for each state to boot, in order, and be sent what
    its power-on read (None: unknown, so no other state joins it); `into` gets the
    classes. Every distinct state is booted or agrees, on every byte a booted state's
    power-on read, with that booted state. With `tear`, so is the state torn inside each
    operation that changes the flash (yielded as -k for operation k, from 1)."""
    return _Reducer(Walk(before, ops), into, tear).run()


class _Reducer:
    def __init__(self, walk: Walk, into: Reduction, tear: Tear | None) -> None:
        self.walk, self.into, self.tear = walk, into, tear
        self.reps: list[Rep] = []
        self.by_print: dict[int, int] = {}  # fingerprint -> class

    def run(self) -> Visits:
        walk, into = self.walk, self.into
        touched: Iterable[int] = ()
        new = True
        while True:
            for rep in self.reps:
                rep.update(walk.flash, touched)
            if new:
                into.distinct += 1
                index = self.joins()
                if index < 0:
                    index = yield from self.boot(walk.done)
                else:
                    into.classes[index].states.append(walk.done)
                self.by_print.setdefault(walk.fingerprint, index)
            into.class_of.append(self.by_print[walk.fingerprint])
            if walk.done == len(walk.ops):
                return
            if self.tear is not None:
                yield from self.torn(self.tear)
            new, touched = walk.step()

    def joins(self, torn: range | None = None) -> int:
        """The class of the walk's flash (`torn`: the sectors a torn operation left as
        they are not in the walk's state), or -1."""
        for rep in reversed(self.reps):  # the latest first: the likeliest
            if torn is None and not rep.differs:
                return rep.index
            if (
                torn is not None
                and not rep.differs - set(torn)
                and rep.agrees(self.walk.flash, torn)
            ):
                return rep.index
        return -1

    def boot(self, point: int) -> Generator[tuple[int, bytes], ReadSet | None, int]:
        """Have the walk's flash booted: a class of its own."""
        reads = yield point, bytes(self.walk.flash)
        index = len(self.into.classes)
        self.into.classes.append(CutClass(point, [point], reads.size if reads else -1))
        if reads is not None:
            self.reps.append(Rep.of(point, index, reads, self.walk.flash))
        return index

    def torn(self, tear: Tear) -> Visits:
        """The state torn inside the walk's next operation: placed in a class, or booted."""
        walk = self.walk
        op = walk.ops[walk.done]
        number, end = walk.done + 1, op.offset + op.length
        old = bytes(walk.flash[op.offset : end])
        cut = tear(old, op, number)
        after = bytearray(old)
        apply(after, FlashOp(op.kind, 0, op.length, op.data))
        if cut in (old, bytes(after)):  # torn, it is the state before or after: none new
            return
        self.into.torn += 1
        sectors = range(op.offset // SECTOR, (end - 1) // SECTOR + 1)
        walk.flash[op.offset : end] = cut
        try:
            index = self.joins(sectors)
            if index < 0:
                yield from self.boot(-number)
            else:
                self.into.classes[index].states.append(-number)
        finally:
            walk.flash[op.offset : end] = old
        for rep in self.reps:  # one made of the torn flash: where it differs from the walk's
            rep.update(walk.flash, sectors)


def runs(points: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted integers as (first, last) runs of consecutive ones."""
    out: list[tuple[int, int]] = []
    for p in sorted(points):
        if out and p == out[-1][1] + 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def runs_text(points: Iterable[int], most: int = 4) -> str:
    """`0-1,200, 5,000-5,020` (and `... (N more)` past `most` runs)."""
    all_runs = runs(points)
    text = [f"{a:,}" if a == b else f"{a:,}-{b:,}" for a, b in all_runs[:most]]
    more = len(all_runs) - most
    return ", ".join(text) + (f" and {more} more run{'s' * (more > 1)}" if more > 0 else "")
