"""The plugin's fault: sectors of a partition erased, one per point."""

from collections.abc import Iterator
from dataclasses import dataclass

from harness.errors import StepFailed
from harness.flash import formats
from harness.scenario.faults import Branches, Fault
from harness.scenario.results import FaultPoint
from harness.scenario.steps import Run

from .formats import EraseSectorArgs


@dataclass(kw_only=True)
class Erased(Branches):
    partition: str
    offset: int


class EraseSector(Fault[EraseSectorArgs, Erased]):
    def record(self, run: Run, args: EraseSectorArgs) -> Erased:
        dev = run.device()
        dev.board.pause()
        before = dev.flash.read_bytes()
        dev.board.power_cut()
        part = formats.parse_table(before).get(args.partition)
        if part is None or max(args.sectors) * formats.SECTOR >= part.size:
            raise StepFailed(f"erase_sector: no such sectors in {args.partition}")
        return Erased(partition=part.name, offset=part.offset, before=before)

    def choose(self, args: EraseSectorArgs, recorded: Erased) -> list[FaultPoint]:
        return [
            FaultPoint(n, f"sector {n}", f"sector {n} of {recorded.partition} erased",
                       f"erased {recorded.partition} sector {n}",
                       recorded.offset + n * formats.SECTOR)
            for n in sorted(set(args.sectors))
        ]  # fmt: skip

    def flashes(self, recorded: Erased) -> Iterator[tuple[FaultPoint, bytes]]:
        for point in recorded.points:
            flash = bytearray(recorded.before)
            flash[point.offset : point.offset + formats.SECTOR] = b"\xff" * formats.SECTOR
            yield point, bytes(flash)
