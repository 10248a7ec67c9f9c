"""Bits of a partition flipped while the board is off: a `Fault` (harness.scenario.faults).

A NOR flash cell keeps a programmed 0 as charge on its floating gate; over months, and
faster when warm, a cell can lose it and read 1 (retention loss). Field reports of
`esp_image: Checksum failed` long after a good update, on a few devices of many
(esp-idf#9547), look like this. The fault powers the board off and, per trial, flips
`bits` of the partition's 0 bits to 1, drawn by a generator seeded with the trial's
seed, so a trial is the same bits on every machine; or one 0 bit in each byte named by
`offsets`. The steps after it run from a power-on of each trial's flash.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from ..errors import StepFailed
from ..flash import formats
from .faults import Branches, Fault, Flashes
from .results import FaultPoint
from .stepformats import BitFlipArgs
from .steps import Run

SPARSE = 1000  # fewer than one 0 bit in this many: list them instead of drawing blind


@dataclass(frozen=True)
class Flip:
    """One bit that read 0 and reads 1 now."""

    offset: int  # the byte, in the flash
    bit: int  # 0 (least significant) to 7


@dataclass(kw_only=True)
class Flipped(Branches):
    """The bit_flip step's detail: the partition, and each trial's flipped bits (with,
    from `Branches`, the points and each one's outcome)."""

    partition: str
    offset: int  # where the partition starts
    size: int
    trials: list[list[Flip]] = field(default_factory=list)


class BitFlip(Fault[BitFlipArgs, Flipped]):
    """Retention loss: bits of a partition's programmed bytes read 1 at the next power-on."""

    def record(self, run: Run, args: BitFlipArgs) -> Flipped:
        """The flash as the board left it; the board powered off."""
        dev = run.device()
        dev.board.pause()  # the writes in flight reach the file
        before = dev.flash.read_bytes()
        dev.board.power_cut()
        table = formats.with_fs_region(formats.parse_table(before), len(before))
        part = table.get(args.partition)
        if part is None:
            raise StepFailed(f"bit_flip: the image has no partition {args.partition!r} (it has "
                             f"{', '.join(table.names())})")  # fmt: skip
        return Flipped(partition=part.name, offset=part.offset, size=part.size, before=before)

    def choose(self, args: BitFlipArgs, recorded: Flipped) -> list[FaultPoint]:
        """One point per trial, its bits drawn by its seed (`seed`, `seed+1`, ...)."""
        region = recorded.before[recorded.offset : recorded.offset + recorded.size]
        seeds = [args.seed + j for j in range(args.trials)]
        recorded.trials = [draw(region, recorded.offset, args, recorded.partition, seed)
                           for seed in seeds]  # fmt: skip
        return [
            _point(recorded, seed, flips)
            for seed, flips in zip(seeds, recorded.trials, strict=True)
        ]

    def flashes(self, recorded: Flipped) -> Flashes:
        for point, flips in zip(recorded.points, recorded.trials, strict=True):
            flash = bytearray(recorded.before)
            for flip in flips:
                flash[flip.offset] |= 1 << flip.bit
            yield point, bytes(flash)


def _point(recorded: Flipped, seed: int, flips: list[Flip]) -> FaultPoint:
    where = [f"bit {f.bit} of {f.offset:#x}" for f in flips]
    shown = ", ".join(where[:4]) + (f" and {len(where) - 4} more" if len(where) > 4 else "")
    count = f"{len(flips)} bit{'s' if len(flips) > 1 else ''}"
    return FaultPoint(
        seed, f"seed {seed}", f"{count} of {recorded.partition} lost (0 reads 1), seed {seed}: "
        f"{shown}", f"{shown} ({recorded.partition})", flips[0].offset,
        f"rerun just that trial with `seed: {seed}` and `trials: 1`",
    )  # fmt: skip


def draw(region: bytes, start: int, args: BitFlipArgs, name: str, seed: int) -> list[Flip]:
    """The bits one trial flips: 0 bits of `region` (which starts at `start` in the flash),
    in order of their place."""
    rng = random.Random(seed)
    if args.offsets is None:
        return [Flip(start + pos // 8, pos % 8) for pos in _zero_bits(region, args.bits, rng, name)]
    flips = []
    for off in args.offsets:
        if off >= len(region):
            raise StepFailed(f"bit_flip: offset {off:#x} is past the end of {name} "
                             f"({len(region):#x} bytes)")  # fmt: skip
        zeros = [b for b in range(8) if not region[off] >> b & 1]
        if not zeros:
            raise StepFailed(f"bit_flip: byte {off:#x} of {name} is erased (0xff): it has no 0 "
                             "bit to lose")  # fmt: skip
        flips.append(Flip(start + off, rng.choice(zeros)))
    return sorted(set(flips), key=lambda f: (f.offset, f.bit))


def _zero_bits(region: bytes, count: int, rng: random.Random, name: str) -> list[int]:
    """`count` distinct positions (byte * 8 + bit) of 0 bits of `region`, drawn by `rng`."""
    zeros = len(region) * 8 - int.from_bytes(region, "big").bit_count()
    if zeros < count:
        raise StepFailed(f"bit_flip: {name} has {zeros} bits at 0, fewer than the {count} to "
                         "flip (an erased partition has none to lose)")  # fmt: skip
    if zeros * SPARSE < len(region) * 8:
        listed = [m.start() * 8 + b for m in re.finditer(rb"[^\xff]", region)
                  for b in range(8) if not region[m.start()] >> b & 1]  # fmt: skip
        return sorted(rng.sample(listed, count))
    chosen: set[int] = set()
    while len(chosen) < count:
        pos = rng.randrange(len(region) * 8)
        if not region[pos // 8] >> (pos % 8) & 1:
            chosen.add(pos)
    return sorted(chosen)
