"""A verdict on a powered-on board that does not ask the firmware: what is installed, what
runs, and which of the update's outcomes that is.

- Installed: each app slot's bytes, over a known image's length, against that image's
  SHA-256. The known images are the old app (what the slot that ran before the update
  held) and the new app (the update's payload, cut to its slot as it is written).
- Runs: the partition the cache MMU maps the code from (harness.emulator.mmu), and
  whether a CPU's PC is in that mapped flash, over a few looks; a guest that resets
  during them is not running.
- Which: the new app running, the old app running (the update lost or rolled back),
  another app running (a slot that holds neither), nothing running (a boot loop, no
  bootable app, the ROM's download mode), or hung (the console's wait found the guest
  stalled: harness.emulator.stall's `GuestStalled`).

The runner gives every fault point's outcome its verdict; `judge` works on any device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ..emulator import mmu
from ..emulator.device import Device
from ..emulator.ota import OtaReport
from ..errors import GuestStalled, HarnessError
from ..flash import formats
from ..flash.inputs import read_input
from ..flash.ops import partition_at
from .results import Verdict, VerdictKind

Which = Literal["old app", "new app"]


@dataclass(frozen=True)
class KnownImage:
    """An app the verdict knows by its bytes: the old or the new one, and its slot."""

    which: Which
    slot: str  # where it was (the old app) or where the update wrote it (the new app)
    sha256: str
    length: int

    @staticmethod
    def of(which: Which, slot: str, data: bytes) -> KnownImage:
        return KnownImage(which, slot, hashlib.sha256(data).hexdigest(), len(data))


@dataclass(frozen=True)
class Known:
    """The images a verdict tells apart, and the table it reads the flash by."""

    table: formats.PartitionTable
    old: KnownImage | None = None
    new: KnownImage | None = None

    @property
    def images(self) -> tuple[KnownImage, ...]:
        return tuple(i for i in (self.old, self.new) if i is not None)

    @staticmethod
    def of(before: bytes, update: OtaReport | None = None) -> Known:
        """From the flash before the fault, and the update (its payload, its target, the
        slot that ran before it), when there is one."""
        table = formats.parse_table(before)
        old_slot = (update.before.boot.slot if update is not None and update.before is not None
                    else formats.FlashState.of(before).boot.slot)  # fmt: skip
        target = table.get(update.target) if update is not None and update.target else None
        new = None
        if update is not None and target is not None:
            new = _payload(Path(update.payload), target.name, target.size)
        return Known(table, _old(before, table, old_slot), new)

    @staticmethod
    def of_image(image: bytes, payload: Path | None = None) -> Known:
        """From the image a cell started from (its old app: the slot it boots) and an
        update's payload file (the new app, wherever it is written)."""
        table = formats.parse_table(image)
        room = max((p.size for p in table if p.is_app), default=0)
        new = _payload(payload, "", room) if payload else None
        return Known(table, _old(image, table, formats.FlashState.of(image).boot.slot), new)


def _old(flash: bytes, table: formats.PartitionTable, slot: str | None) -> KnownImage | None:
    """The app in `slot` of `flash`, measured as the bootloader reads it."""
    part = table.get(slot) if slot else None
    if part is None or not part.is_app:
        return None
    length = formats.check_app(flash[part.offset : part.end]).length
    app = flash[part.offset : part.offset + length] if length else b""
    return KnownImage.of("old app", part.name, app) if app else None


def _payload(path: Path, slot: str, room: int) -> KnownImage | None:
    """A payload file as an update writes it (cut to its slot's `room`)."""
    try:
        data = read_input(path)[:room]
    except HarnessError:
        return None
    return KnownImage.of("new app", slot, data) if data else None


def update_of(details: Sequence[object]) -> OtaReport | None:
    """The last update among steps' details: an `ota` step's, or the one a fault
    interrupted (its `interrupted` detail)."""
    found = None
    for detail in details:
        inner = getattr(detail, "interrupted", None)
        for candidate in (detail, inner):
            if isinstance(candidate, OtaReport):
                found = candidate
    return found


def installed(flash: bytes, known: Known) -> dict[str, list[str]]:
    """Each app slot (by the table before the fault) and the known images it holds."""
    out: dict[str, list[str]] = {}
    for part in known.table:
        if part.is_app:
            out[part.name] = [
                i.which for i in known.images if i.length <= part.size and
                hashlib.sha256(flash[part.offset : part.offset + i.length]).hexdigest() == i.sha256
            ]  # fmt: skip
    return out


def decide(watched: mmu.Watch, flash: bytes, known: Known) -> Verdict:
    """The verdict from a watch of a board that is not stalled, and its flash."""
    last = watched.looks[-1] if watched.looks else mmu.Look(None, ())
    seen = Verdict("nothing", "", installed=installed(flash, known),
                   pcs=[c.pc for c in last.cpus], resets=watched.resets)  # fmt: skip
    codes = {w.code.code for w in watched.looks if w.code is not None}
    if not watched.looks or any(w.code is None for w in watched.looks):
        why = "QEMU did not say what its MMU maps (the emulation has ended)"
    elif watched.resets:
        why = f"the chip reset itself {watched.resets} time(s) while looked at: a boot loop"
    elif codes == {None}:
        why = ("no app page is mapped: the ROM or the bootloader runs (download mode, no "
               "bootable app, or between resets)")  # fmt: skip
    elif len(codes) > 1:
        why = "the code mapping changed between looks: the chip is restarting"
    else:
        return _running(seen, codes.pop(), watched, flash, known)
    return replace(seen, why=why)


def _running(seen: Verdict, code: int | None, watched: mmu.Watch, flash: bytes,
             known: Known) -> Verdict:  # fmt: skip
    """An app page stays mapped: which partition, and which known image it holds."""
    assert code is not None
    table = formats.with_fs_region(known.table, len(flash))
    runs = partition_at(table, code)
    seen = replace(seen, runs=runs, code_at=code,
                   pc_in_flash=any(w.in_flash() for w in watched.looks))  # fmt: skip
    part = table.get(runs)
    if part is None or not part.is_app:
        return replace(seen, kind="other app", why=f"code is mapped from {runs} at {code:#x}, "
                       "not from an app slot")  # fmt: skip
    images = seen.installed.get(runs, [])
    old = known.old
    kind: VerdictKind = "other app"
    if "new app" in images and ("old app" not in images or old is None or old.slot != runs):
        kind = "new app"
    elif "old app" in images:
        kind = "old app"
    said = " = ".join(images) or "neither known image"
    return replace(seen, kind=kind, why=f"the MMU maps code from {runs} at {code:#x}, "
                   f"which holds {said}")  # fmt: skip


def stalled(error: BaseException | None) -> GuestStalled | None:
    """The GuestStalled among an error's causes (the console's diagnosis), if any."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        if isinstance(error, GuestStalled):
            return error
        seen.append(error)
        error = error.__cause__ or error.__context__
    return None


def judge(dev: Device, known: Known, failure: BaseException | None = None,
          flash: bytes | None = None) -> Verdict | None:  # fmt: skip
    """The verdict on `dev` now (None: a chip whose MMU this does not read). `failure`:
    what the steps since its power-on raised (a stalled guest among its causes makes it
    `hung`); `flash`: the flash file, if read."""
    if dev.chip.name != mmu.CHIP:
        return None
    data = flash if flash is not None else dev.flash.read_bytes()
    stuck = stalled(failure)
    if stuck is not None:
        first = str(stuck).splitlines()[0] if str(stuck) else "the guest stalled"
        return Verdict("hung", first, installed=installed(data, known))
    return decide(mmu.watch(dev.board), data, known)
