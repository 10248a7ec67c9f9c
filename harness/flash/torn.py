"""Torn operations: the flash a power cut leaves inside an erase or a page program, by a
model, drawn by a seeded generator (the same bits on every machine).

A NOR erase raises cells' charge towards 1 over milliseconds; stopped on the way, some
old 0 bits still read 0. A page program pulls the bits due to become 0 down over
microseconds; stopped on the way, some still read 1. The figures are not ESP32 SPI NOR
measurements: the erase figure is BrickProof's (PyPI `brickproof-fw` 0.4.0), measured on
an STM32F103's internal flash, and no measurement of a torn program is used.
"""

from __future__ import annotations

import random

from .ops import FlashOp

# an erase stopped at once: 4.5% of the old 0 bits still 0 (BrickProof, STM32F103; 15 us
# later 0.35%); a program stopped half-way: each bit due to become 0 still 1 with p 1/2
ERASE_KEPT = 0.045
PROGRAM_LEFT = 0.5
MODEL = (
    "torn model: an erase cut at once keeps each old 0 bit at 0 with p=4.5% (BrickProof's "
    "measurement on an STM32F103's flash, 0.35% 15 us later; not an ESP32 SPI NOR "
    "measurement); a program cut half-way leaves each bit due to become 0 at 1 with p=50% "
    "(an assumption, no measurement)"
)
PRECISION = 16  # bits of the probability a mask is drawn with


def mask(rng: random.Random, bits: int, p: float) -> int:
    """`bits` random bits, each 1 with probability `p` (to 2**-PRECISION): bit by bit of
    p, x < p for a uniform x drawn one binary digit per word."""
    digits = [int(p * 2**i) & 1 for i in range(1, PRECISION + 1)]
    less = 0  # x == p on every digit so far (from the last): not less
    for digit in reversed(digits):
        x = rng.getrandbits(bits)
        less = (~x | less) if digit else (~x & less)
    return less & ((1 << bits) - 1)


def torn(old: bytes, op: FlashOp, rng: random.Random) -> bytes:
    """The bytes `op` leaves in its range when the power goes during it (`old`: before)."""
    bits = 8 * op.length
    full = (1 << bits) - 1
    was = int.from_bytes(old, "big")
    if op.kind == "erase":
        kept = ~was & full & mask(rng, bits, ERASE_KEPT)  # old 0 bits still 0
        return (full & ~kept).to_bytes(op.length, "big")
    due = was & ~int.from_bytes(op.data, "big") & full  # bits the program takes to 0
    left = due & mask(rng, bits, PROGRAM_LEFT)
    return ((was & int.from_bytes(op.data, "big")) | left).to_bytes(op.length, "big")


def rng_for(seed: int, op_number: int, depth: int = 1) -> random.Random:
    """The generator of the torn state inside operation `op_number` (from 1) of the step
    (depth 1) or of a power-on after a cut (2)."""
    return random.Random(f"torn:{seed}:{depth}:{op_number}")
