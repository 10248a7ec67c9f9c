"""Run one scenario cell: build its image, boot it, run its steps, keep the evidence.

`run_cell()` is the engine behind both the pytest plugin and `harness run`. The image
is built first (a recipe that cannot be made fails before anything boots); then each
step's handler (harness.steps) runs with this cell as its `Run`. A step that is not met
raises `StepFailed`, and every other harness error (timeout, crash, boot loop, QEMU
gone) is reported against the step it happened in. The cell's artifact folder holds:

    serial.log  qemu-cmdline.txt  qemu-stderr.log   what the run's QEMU saw and said
    timeline.json                                   each step: start, duration, result
    flash-before.json  flash-after.json             partitions, otadata, boot choice
    result.json                                     the outcome, firmware and image used
    flash.bin                                       the flash at the end (failures only)

Retries (`retries=N`) rerun a cell only when QEMU itself crashed (its own assertion)
or a watchdog reset it, never for a firmware result; every attempt keeps its folder
(`attempt-2/`, ...) and is listed in the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from . import device, formats, images, ota, recipes
from .errors import RETRYABLE, DeviceTimeout, GuestStalled, HarnessError, StepFailed
from .firmware import sha256_of
from .qemu import WATCHDOGS
from .results import Attempt, CellResult, FirmwareUsed, ImageUsed, Status, StepRecord, write_json
from .scenario import Cell, step_kind
from .steps import STEPS

Progress = Callable[[Cell, int, str], None]


@dataclass(frozen=True)
class CellImage:
    """What a cell boots: the build recipe, the named recipe it came from, PSRAM."""

    recipe: images.Recipe
    name: str
    psram: bool | None  # None: as the firmware needs (SPIRAM builds get PSRAM)


def recipe_for(cell: Cell, cache: Path | None = None) -> CellImage:
    """The flash image a cell boots: its size's recipe, the scenario's changes, its files."""
    assert cell.firmware is not None
    scenario, spec = cell.scenario, cell.scenario.image
    base = scenario.path.parent
    named = recipes.for_size(
        cell.flash_size, cell.needs_ota_layout(), recipes.search_path(base.parent, Path.cwd())
    )
    recipe = named.spec.recipe(cell.firmware.path)
    changes: dict[str, Any] = {}
    if spec.layout is not None:
        changes["layout"] = spec.layout
    if spec.resize is not None:
        changes["resize"] = spec.resize
    if spec.header_flash_size is not None:
        changes["header_size"] = images.parse_flash_size(spec.header_flash_size)
    recipe = dataclasses.replace(recipe, **changes)
    vfs = [(base / cell.expand(src), dst) for dst, src in spec.vfs.items()]
    writes = [(part, payload_path(cell, recipe, src, cache)) for part, src in spec.flash.items()]
    for index, item in enumerate(scenario.steps):
        kind, args = step_kind(item)
        for file in STEPS[kind].files(expand_args(cell, args, index)):
            src = (
                payload_path(cell, recipe, file.source, cache)
                if file.payload
                else (base / file.source)
            )
            vfs.append((src, file.device_path))
    psram_word = spec.psram or named.spec.psram
    psram = {"auto": None, "on": True, "off": False}[psram_word]
    if cell.psram is not None:
        psram = cell.psram
    recipe = dataclasses.replace(recipe, vfs_files=tuple(vfs), writes=tuple(writes))
    return CellImage(recipe, named.name, psram)


@dataclass(frozen=True)
class StagedSlot:
    """A payload written into an OTA slot of the run's flash copy before QEMU starts."""

    target: str
    offset: int
    data: bytes


def plan_staging(
    cell: Cell, image: CellImage, built: images.BuiltImage, cache: Path | None = None
) -> dict[str, StagedSlot]:
    """payload name -> where its staged step writes it: its `target`, or the slot the
    device will update (esp_ota_get_next_update_partition, by the image's otadata)."""
    flash = built.path.read_bytes()
    table = formats.parse_table(flash)
    running = formats.FlashState.of(flash).boot.slot
    planned: dict[str, StagedSlot] = {}
    for index, item in enumerate(cell.scenario.steps):
        kind, args = step_kind(item)
        want = STEPS[kind].stages(expand_args(cell, args, index))
        if want is None:
            continue
        slot = table.get(want.target) if want.target else formats.next_update_slot(table, running)
        if slot is None or not slot.is_app:
            raise HarnessError(f"no OTA slot {want.target or '(next)'} to stage {want.payload} in")
        taken = [p for p, s in planned.items() if s.target == slot.name and p != want.payload]
        if taken:
            raise HarnessError(
                f"{want.payload} and {taken[0]} would both be staged into {slot.name} before "
                "the boot: give one of them method: harness"
            )
        data = ota.staged_bytes(payload_path(cell, image.recipe, want.payload, cache), slot)
        planned[want.payload] = StagedSlot(slot.name, slot.offset, data)
    return planned


def needs_host_alone(cell: Cell) -> bool:
    """The cell must not share the host: a step says so (device-side writes, the user's
    tools), or its firmware is one measured to stall on a shared host."""
    steps = [step_kind(s) for s in cell.scenario.steps]
    if any(STEPS[kind].alone(args) for kind, args in steps):
        return True
    return stalls(cell)


def stalls(cell: Cell) -> bool:
    """The cell's firmware is a build measured to stall under emulation (harness.firmware)."""
    return cell.firmware is not None and cell.facts().runs_alone


def payload_path(cell: Cell, recipe: images.Recipe, name: str, cache: Path | None = None) -> Path:
    """A payload kind made from the cell's firmware, or a file relative to the scenario."""
    if name in images.PAYLOAD_KINDS:
        return images.payload(recipe, name, cache)
    return cell.scenario.path.parent / cell.expand(name)


def expand_args(
    cell: Cell, args: BaseModel, index: int, runtime: dict[str, str] | None = None
) -> Any:
    """The step's arguments with ${variables} substituted for this cell."""
    where = ("steps", index)

    def expand(text: str) -> str:
        return cell.expand(text, where, runtime)

    update: dict[str, Any] = {}
    for name, value in args:
        if isinstance(value, str):
            update[name] = expand(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            update[name] = [expand(v) for v in value]
        elif isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            update[name] = {k: expand(v) for k, v in value.items()}
    return args.model_copy(update=update)


def run_cell(
    cell: Cell,
    *,
    artifacts: Path,
    qemu: str | Path | None = None,
    cache: Path | None = None,
    retries: int = 0,
    progress: Progress | None = None,
    watchdogs: bool | None = None,
    keep_flash: bool = False,
) -> CellResult:
    """Run every step of `cell`, retrying QEMU's own crashes up to `retries` times.

    `watchdogs`: the run's setting, used where the scenario does not say (None: the
    harness's default). `keep_flash` keeps `flash.bin` even when the cell passes.
    """
    folder = artifacts / _safe(cell.name)
    reason = cell.skip_reason()
    if reason:
        return CellResult(cell.name, "skipped", reason, artifacts=str(folder))
    assert cell.firmware is not None
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    fw = cell.firmware
    entry = fw.entry.id if fw.entry else None
    start = time.monotonic()
    wanted = cell.scenario.watchdogs
    wdt = wanted == "on" if wanted else (WATCHDOGS if watchdogs is None else watchdogs)
    result = CellResult(
        cell.name, "failed", artifacts=str(folder), watchdogs=wdt,
        firmware=FirmwareUsed(str(fw.path), fw.id, fw.sha256, entry, fw.pinned, fw.origin),
    )  # fmt: skip
    for attempt in range(1, retries + 2):
        run_dir = folder if attempt == 1 else folder / f"attempt-{attempt}"
        run = CellRun(cell, run_dir, qemu, cache, progress, watchdogs=wdt, keep_flash=keep_flash)
        error = run.run()
        result.timeline, result.booted, result.image = run.timeline, run.booted, run.image_used
        status: Status = "passed" if error is None else "failed"
        result.attempts.append(Attempt(attempt, status, str(error or ""), str(run_dir)))
        if error is None:
            result.status, result.message = "passed", ""
            break
        result.message = str(error)
        if not retryable(error.__cause__) or attempt > retries:
            break
    result.elapsed_s = round(time.monotonic() - start, 3)
    if sha256_of(fw.path) != fw.sha256:
        result.status = "failed"  # the harness only ever reads its inputs: say so loudly
        result.message = f"{fw.path} changed during the run (inputs must stay untouched)"
    if len(result.attempts) > 1:
        tried = "; ".join(a.line() for a in result.attempts)
        result.message = (result.message + f"\n    retried ({tried})").lstrip("\n")
    result.write(folder)
    return result


def retryable(error: BaseException | None) -> bool:
    """Only what is likely not the firmware's doing: QEMU's own crash, or watchdog resets.

    Under emulation the guest's clock keeps running while the host starves QEMU, so a
    watchdog reset (in a boot loop, or in the middle of a REPL or OTA step) is most often
    the host's doing. A firmware that truly trips its watchdog does so again on the
    retry, and fails; the retry only costs time, and is reported.
    """
    return isinstance(error, RETRYABLE)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\[\]-]+", "_", name)


class CellRun:
    """One attempt at one cell: what the steps see as their `Run`."""

    def __init__(
        self,
        cell: Cell,
        run_dir: Path,
        qemu: str | Path | None,
        cache: Path | None,
        progress: Progress | None,
        *,
        watchdogs: bool,
        keep_flash: bool = False,
    ):
        self.cell, self.run_dir, self.qemu, self.cache = cell, run_dir, qemu, cache
        self.progress, self.watchdogs, self.keep_flash = progress, watchdogs, keep_flash
        self.cursor = 0
        self.booted: str | None = None
        self.timeline: list[StepRecord] = []
        self.image_used: ImageUsed | None = None
        self._image: CellImage | None = None
        self.built: images.BuiltImage | None = None
        self.staging: dict[str, StagedSlot] = {}
        self.dev: device.Device | None = None
        self.stack = contextlib.ExitStack()
        self.clock = time.monotonic()

    def run(self) -> StepFailed | None:
        """Build the image, run all steps; return the failure (None when every step passed)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        scenario = self.cell.scenario
        with self.stack:
            try:
                self._image = recipe_for(self.cell, self.cache)
                self.built = images.build_image(self.image.recipe, self.cache)
                self.staging = plan_staging(self.cell, self.image, self.built, self.cache)
            except HarnessError as exc:
                failure = StepFailed(f"{self.cell.name}: the image could not be made: {exc}"
                                     f"\n  artifacts: {self.run_dir}")  # fmt: skip
                failure.__cause__ = exc
                return failure
            self.image_used = _image_used(self.image.name, self.built)
            for index, item in enumerate(scenario.steps):
                kind, args = step_kind(item)
                record = StepRecord(index + 1, kind, scenario.step_line(index), self.now())
                self.timeline.append(record)
                if self.progress:
                    self.progress(self.cell, index, kind)
                try:
                    expanded = expand_args(self.cell, args, index, self.runtime_vars())
                    record.detail = STEPS[kind].run(self, expanded)
                    if self.dev is not None:
                        self.dev.console.check(f"step {index + 1} `{kind}`")
                except HarnessError as raised:
                    error = self._stall_named(raised)
                    record.status, record.elapsed_s = (
                        "failed",
                        round(self.now() - record.start_s, 3),
                    )
                    self._finish(failed=True)
                    failure = StepFailed(self._failure(record, error))
                    failure.__cause__ = error
                    return failure
                record.status, record.elapsed_s = "passed", round(self.now() - record.start_s, 3)
                self._write_timeline()
            self._finish(failed=False)
        return None

    def _stall_named(self, exc: HarnessError) -> HarnessError:
        """A device that stopped answering, on a build before ESP-IDF 5.0.4, is that build's
        known stall under QEMU 8.0 (it passes on the next run), so say so, and let the
        retry policy have it."""
        if type(exc) is not DeviceTimeout or not stalls(self.cell):
            return exc
        where = self.dev.where_stuck() if self.dev is not None else "the device stopped answering"
        stalled = GuestStalled(
            f"{exc}\n  {where}; builds before ESP-IDF 5.0.4 stall like this under QEMU 8.0 "
            "even on a quiet host (README: Known behaviour), the emulator, not the firmware"
        )
        stalled.__cause__ = exc
        return stalled

    @property
    def image(self) -> CellImage:
        assert self._image is not None, "run() makes the image first"
        return self._image

    def runtime_vars(self) -> dict[str, str]:
        """${port}, ${rfc2217} (once the board is served) and the image's own."""
        board = self.dev.board if self.dev is not None else None
        return {
            "port": board.relay.pty_path if board else "",
            "rfc2217": board.relay.rfc2217_url if board else "",
            **self._image_vars,
        }

    @functools.cached_property
    def _image_vars(self) -> dict[str, str]:
        """${run_dir}, ${image}, ${python}, the payload files and ${offset_PARTITION} for
        each partition of the image: fixed for the run, so worked out once."""
        assert self.built is not None, "run() makes the image before the steps"
        values = {"run_dir": str(self.run_dir), "image": str(self.built.path),
                  "python": sys.executable}  # fmt: skip
        with self.built.path.open("rb") as f:  # the table: one sector at 0x8000
            head = f.read(formats.TABLE_OFFSET + formats.SECTOR)
        for part in formats.parse_table(head):
            values[f"offset_{part.name}"] = f"0x{part.offset:x}"
        used = str([s.model_dump() for s in self.cell.scenario.steps])
        for kind in images.PAYLOAD_KINDS:  # made only when the scenario names them
            name = f"payload_{kind.replace('-', '_')}"
            values[name] = str(self.payload(kind)) if f"${{{name}}}" in used else ""
        return values

    # -- Run, as the steps see it ---------------------------------------------------------
    def boot(self) -> device.Device:
        assert self.built is not None
        serve = any(STEPS[step_kind(s)[0]].port for s in self.cell.scenario.steps)
        alone = needs_host_alone(self.cell)
        self.dev = self.stack.enter_context(
            device.boot(
                self.built.path,
                serve=serve,
                alone=alone,
                qemu=self.qemu,
                psram=self.image.psram,
                run_dir=self.run_dir,
                data_channel=True,
                watchdogs=self.watchdogs,
                stage=[(s.offset, s.data) for s in self.staging.values()],
            )
        )
        _flash_summary(self.run_dir / "flash-before.json", self.dev.flash)
        return self.dev

    def device(self) -> device.Device:
        if self.dev is None:  # load() rejects this order; kept for API users
            raise StepFailed("no device: this step needs a `boot` step before it")
        return self.dev

    def staged_slot(self, payload: str) -> str:
        return self.staging[payload].target

    def payload(self, name: str) -> Path:
        return payload_path(self.cell, self.image.recipe, name, self.cache)

    def host_path(self, name: str) -> Path:
        return self.cell.scenario.path.parent / name

    def inspect_target(self, name: str) -> Path:
        if name in images.PAYLOAD_KINDS:
            return self.payload(name)
        if name == "image" and self.built is not None:
            return self.built.path
        if name == "flash":
            return self.device().flash
        if name == "firmware" and self.cell.firmware is not None:
            return self.cell.firmware.path
        return self.host_path(name)

    def now(self) -> float:
        return round(time.monotonic() - self.clock, 3)

    # -- evidence -----------------------------------------------------------------------
    def _failure(self, record: StepRecord, exc: HarnessError) -> str:
        where = f"{self.cell.scenario.path}:{record.line}"
        tail = ""
        if self.dev is not None and "serial log" not in str(exc):
            tail = "\n  last serial lines:\n" + self.dev.console.log.last_lines()
        return (
            f"{self.cell.name}: step {record.index} `{record.step}` ({where}) failed: {exc}"
            f"{tail}\n  artifacts: {self.run_dir}"
        )

    def _finish(self, failed: bool) -> None:
        if self.dev is not None:
            with contextlib.suppress(OSError, HarnessError):
                _flash_summary(self.run_dir / "flash-after.json", self.dev.flash)
        self._write_timeline()
        self.stack.close()  # QEMU is reaped here, before the flash file is judged
        flash = self.run_dir / "flash.bin"
        if not failed and not self.keep_flash and flash.exists():
            flash.unlink()  # 4-16 MB per cell; kept only as evidence of a failure

    def _write_timeline(self) -> None:
        write_json(self.run_dir / "timeline.json", self.timeline)


def _image_used(name: str, built: images.BuiltImage) -> ImageUsed:
    fs = built.filesystem
    where = None
    if fs is not None:
        how = "in the table" if fs.in_table else "made at boot after the last partition"
        where = f"{fs.label} at {fs.offset:#x}, {fs.size:#x} bytes ({how})"
    return ImageUsed(name, built.conversion, list(built.notes), where)


@dataclass(frozen=True)
class _PartitionSummary:
    name: str
    type: int
    subtype: int
    offset: str
    size: int


@dataclass(frozen=True)
class _FlashSummary:
    partitions: list[_PartitionSummary]
    otadata: tuple[formats.OtaRecord, ...] | None
    otadata_selects: formats.BootChoice


def _flash_summary(path: Path, flash: Path) -> None:
    data = flash.read_bytes()  # 16 MB: read once for both the table and otadata
    state = formats.FlashState.of(data)
    parts = [_PartitionSummary(p.name, p.type, p.subtype, f"0x{p.offset:x}", p.size)
             for p in formats.parse_table(data)]  # fmt: skip
    write_json(path, _FlashSummary(parts, state.otadata, state.boot))
