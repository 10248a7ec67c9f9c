"""Flash operations as the chip sees them, and the flash as it stood after any of them.

A power cut leaves the flash holding exactly what the chip had erased and programmed so
far. NOR flash semantics make that a pure function of the flash before and the
operations since: an erase sets its bytes to 0xff, a program ANDs its bytes in (bits
only go from 1 to 0), which is what QEMU's m25p80 model does. So a cut after operation N
is rebuilt on the host from one recording, instead of emulating the update again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from . import formats

OpKind = Literal["erase", "program"]


@dataclass(frozen=True)
class FlashOp:
    """One erase or page program, as the flash chip received it."""

    kind: OpKind
    offset: int
    length: int
    data: bytes = b""  # program: the bytes sent (ANDed into the flash)

    def __str__(self) -> str:
        return f"{self.kind} of {self.length} bytes at {self.offset:#x}"

    @property
    def changes_nothing(self) -> bool:
        """A program of 0xff bytes: NOR flash clears no bit for it (esptool pads with them)."""
        return self.kind == "program" and self.data.count(0xFF) == len(self.data)


def apply(flash: bytearray, op: FlashOp) -> None:
    """Do one operation to `flash`, as the chip does."""
    end = op.offset + op.length
    if end > len(flash):
        raise ValueError(f"{op} runs past the end of a {len(flash):#x}-byte flash")
    if op.kind == "erase":
        flash[op.offset : end] = b"\xff" * op.length
        return
    old = int.from_bytes(flash[op.offset : end], "big")
    flash[op.offset : end] = (old & int.from_bytes(op.data, "big")).to_bytes(op.length, "big")


def states(
    before: bytes, ops: Sequence[FlashOp], points: Iterable[int]
) -> Iterator[tuple[int, bytes]]:
    """(N, the flash after the first N operations) for each point, in ascending order, in
    one pass over the operations."""
    flash, done = bytearray(before), 0
    for point in sorted(set(points)):
        if not 0 <= point <= len(ops):
            raise ValueError(f"cut point {point} is outside 0..{len(ops)}")
        for op in ops[done:point]:
            apply(flash, op)
        done = point
        yield point, bytes(flash)


def changed_sectors(before: bytes, after: bytes) -> list[int]:
    """The offsets of the 4 KB sectors that differ."""
    step = formats.SECTOR
    return [o for o in range(0, min(len(before), len(after)), step)
            if before[o : o + step] != after[o : o + step]]  # fmt: skip


def changed_stretches(
    before: bytes, after: bytes, table: formats.PartitionTable
) -> list[tuple[str, int, int]]:
    """(partition, offset, length): the runs of differing sectors, one per partition they
    lie in (`table` as `formats.with_fs_region` names the flash)."""
    runs: list[tuple[str, int, int]] = []
    for offset in changed_sectors(before, after):
        name = partition_at(table, offset)
        if runs and runs[-1][0] == name and sum(runs[-1][1:]) == offset:
            runs[-1] = (name, runs[-1][1], runs[-1][2] + formats.SECTOR)
        else:
            runs.append((name, offset, formats.SECTOR))
    return runs


def partition_at(table: formats.PartitionTable, offset: int) -> str:
    """The partition holding `offset`, or where else it is (bootloader, table, free)."""
    for part in table:
        if part.offset <= offset < part.offset + part.size:
            return part.name
    if offset < formats.TABLE_OFFSET:
        return "bootloader"
    if offset < formats.TABLE_OFFSET + formats.SECTOR:
        return "partition table"
    return "unpartitioned flash"


def where(op: FlashOp, table: formats.PartitionTable) -> str:
    """`erase of 4096 bytes at 0x1d0000 (ota_1, sector 4)`: what an operation touched."""
    name = partition_at(table, op.offset)
    part = table.get(name)
    if part is None:
        return f"{op} ({name})"
    return f"{op} ({name}, sector {(op.offset - part.offset) // formats.SECTOR})"
