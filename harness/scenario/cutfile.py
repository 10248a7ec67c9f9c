"""A power cut's recording, kept in the cell's artifacts, and the flash of any of its points.

The runner keeps, beside each power cut by operations, the flash before it and every
flash operation of the interrupted step (`power-cut-STEP.ops.gz`: one gzip stream, a JSON
header line, the flash, then each operation as kind, offset, length and, for a program,
its bytes). A mostly erased flash and one update's writes come to a few MB at most, and
from them the flash any point left is rebuilt exactly (harness.flash.ops), for every
state the cut passed through, not only those the run powered on from:
`harness powercut export` writes it for `esptool write-flash 0` on a real board.
"""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .. import chips
from ..errors import HarnessError
from ..flash import formats, torn
from ..flash.ops import FlashOp, states
from .faults import Branches
from .results import ArtifactsError, CellResult, iter_cells

FORMAT = 1
PATTERN = "power-cut-*.ops.gz"
_OP = struct.Struct("<cII")  # kind (e: erase, p: program), offset, length; then a program's bytes
_KINDS = {"erase": b"e", "program": b"p"}


def path_of(folder: Path, step: int) -> Path:
    return folder / f"power-cut-{step}.ops.gz"


def keep(folder: Path, step: int, branches: Branches) -> Path | None:
    """Keep a power cut's recording (None: `branches` is no cut by operations)."""
    from .powercut import Recorded  # a power cut's own detail; other faults keep nothing

    if not isinstance(branches, Recorded) or branches.by != "operations" or not branches.ops:
        return None
    path = path_of(folder, step)
    header = {"format": FORMAT, "step": step, "flash_size": len(branches.before),
              "ops": len(branches.ops), "seed": branches.seed}  # fmt: skip
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(json.dumps(header).encode() + b"\n")
        f.write(branches.before)
        for op in branches.ops:
            f.write(_OP.pack(_KINDS[op.kind], op.offset, op.length))
            if op.kind == "program":
                f.write(op.data)
    return path


@dataclass(frozen=True)
class Cut:
    """A kept power cut: the flash before it, its operations, where it was read from."""

    path: Path
    step: int
    before: bytes
    ops: list[FlashOp]
    seed: int | None = None  # `torn: true`: the seed its torn states were drawn by

    def flash(self, point: int) -> bytes:
        """The flash as the cut after `point` operations left it (0: none done; -k: the
        torn state inside operation k, drawn by the run's seed as the sweep drew it)."""
        if point < 0:
            return self._torn(-point)
        from .everystate import SECOND  # second cuts' point keys start there

        if point >= SECOND:
            raise HarnessError(f"--point {point} is a second cut, inside the power-on after a "
                               "first one: its writes are not kept; export the first cut's "
                               "point and power it on")  # fmt: skip
        if not 0 <= point <= len(self.ops):
            raise HarnessError(
                f"--point {point} is out of range: the cut at step {self.step} recorded "
                f"{len(self.ops)} flash operations (points go from 0, before the first, to "
                f"{len(self.ops)}, after the last)"
            )
        return next(flash for _, flash in states(self.before, self.ops, [point]))

    def _torn(self, k: int) -> bytes:
        if self.seed is None:
            raise HarnessError(f"--point -{k} is a torn state, and the cut at step {self.step} "
                               "drew none (`torn: true` draws them)")  # fmt: skip
        if not 1 <= k <= len(self.ops):
            raise HarnessError(f"--point -{k} is out of range: torn states go from -1 to "
                               f"-{len(self.ops)}, inside each recorded operation")  # fmt: skip
        flash = bytearray(self.flash(k - 1))
        op = self.ops[k - 1]
        old = bytes(flash[op.offset : op.offset + op.length])
        flash[op.offset : op.offset + op.length] = torn.torn(old, op, torn.rng_for(self.seed, k))
        return bytes(flash)


def load(path: Path) -> Cut:
    """A kept cut, or one line saying why it cannot be read."""
    try:
        with gzip.open(path, "rb") as f:
            header = json.loads(f.readline())
            if header.get("format") != FORMAT:
                kept = header.get("format")
                raise ArtifactsError(f"{path}: a power cut kept in format {kept}; this "
                                     f"harness reads {FORMAT}")  # fmt: skip
            before = f.read(header["flash_size"])
            ops = []
            for _ in range(header["ops"]):
                kind, offset, length = _OP.unpack(f.read(_OP.size))
                data = f.read(length) if kind == b"p" else b""
                ops.append(FlashOp("program" if kind == b"p" else "erase", offset, length, data))
    except (OSError, EOFError, ValueError, KeyError, struct.error) as exc:
        raise ArtifactsError(f"{path}: cannot be read: {exc}") from None
    if len(before) != header["flash_size"]:
        raise ArtifactsError(f"{path}: cut short (the flash before is {len(before)} bytes)")
    seed = header.get("seed")
    return Cut(path, int(header["step"]), before, ops, int(seed) if seed is not None else None)


def find(artifacts: Path, step: int | None = None) -> tuple[CellResult, Path]:
    """The one kept power cut under `artifacts` (a cell's folder, or one holding a single
    cell with a cut), and its cell; one line when there is none, or more than one."""
    if not artifacts.is_dir():
        raise HarnessError(f"{artifacts}: no such artifacts folder")
    found = [(cell, path) for cell in iter_cells(artifacts)
             for path in sorted(cell.last_run.glob(PATTERN))]  # fmt: skip
    if step is not None:
        found = [(cell, path) for cell, path in found if path == path_of(cell.last_run, step)]
    if not found:
        which = f" at step {step}" if step is not None else ""
        raise HarnessError(
            f"{artifacts}: no power cut{which} in it (a cell's `power_cut` by operations "
            "keeps its recording there: power-cut-STEP.ops.gz)"
        )
    if len(found) > 1:
        names = ", ".join(f"{cell.name} step {_step(path)}" for cell, path in found[:4])
        raise HarnessError(f"{artifacts} holds {len(found)} power cuts ({names}): name a cell's "
                           "folder, and --step for a cell with several")  # fmt: skip
    return found[0]


def _step(path: Path) -> str:
    return path.name.removeprefix("power-cut-").removesuffix(".ops.gz")


def esptool_command(flash: bytes, out: Path) -> str:
    """The command that writes an exported flash to a real board, whole, from offset 0:
    the chip and flash size of the image (its bootloader header keeps its own mode and
    frequency: esptool changes a header only when it writes the bootloader's offset)."""
    chip = chips.DEFAULT.name
    for offset in chips.bootloader_offsets():
        header = formats.ImageHeader.parse(flash[offset : offset + 24])
        if header is not None and header.profile is not None:
            chip = header.chip
            break
    size = f"{len(flash) // (1024 * 1024)}MB"
    return f"esptool --chip {chip} --port PORT write-flash --flash-size {size} 0 {out}"
