"""Run one scenario cell: build its image, boot it, run its steps, keep the evidence.

`run_cell()` is the engine behind both the pytest plugin and `harness run`. Each step
is a method named after it; a step that is not met raises `StepFailed`, and every
other harness error (timeout, crash, boot loop, QEMU gone) is reported against the
step it happened in. The cell's artifact folder holds:

    serial.log  qemu-cmdline.txt  qemu-stderr.log   what the run's QEMU saw and said
    timeline.json                                   each step: start, duration, result
    flash-before.json  flash-after.json             partitions, otadata, boot choice
    flash.bin                                       the flash at the end (failures only)

Retries (`retries=N`) rerun a cell only when QEMU itself crashed (its own assertion)
or a boot loop came from host load, never for a firmware result; every attempt keeps
its folder (`attempt-2/`, ...) and is listed in the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from . import device, images, inspect, ota
from .console import RESET_BANNER
from .errors import (
    BootLoop,
    DeviceError,
    HarnessError,
    QemuExited,
    StepFailed,
    UnexpectedReset,
)
from .scenario import PAYLOAD_KINDS, Cell, step_kind

ANSI = re.compile(r"\x1b\[[0-9;]*m")
Progress = Callable[[Cell, int, str], None]


@dataclass
class StepRecord:
    index: int
    step: str
    line: int
    start_s: float
    elapsed_s: float = 0.0
    status: str = "running"
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class CellResult:
    name: str
    status: str  # passed | failed | skipped
    message: str = ""
    elapsed_s: float = 0.0
    artifacts: str = ""
    booted: str | None = None
    attempts: list[dict[str, str]] = field(default_factory=list)
    timeline: list[StepRecord] = field(default_factory=list)

    @property
    def serial_logs(self) -> list[Path]:
        root = Path(self.artifacts)
        return sorted(root.glob("serial.log")) + sorted(root.glob("attempt-*/serial.log"))


def recipe_for(cell: Cell) -> images.Recipe:
    """The flash image a cell boots: its firmware, size, conversion and vfs files."""
    assert cell.firmware is not None
    spec = cell.scenario.image
    base = cell.scenario.path.parent
    vfs = [(base / cell.expand(src), dst) for dst, src in spec.vfs.items()]
    recipe = images.Recipe(
        cell.firmware,
        images.parse_flash_size(cell.flash_size),
        layout=spec.layout,
        resize=spec.resize,
        header_size=images.parse_flash_size(spec.header_flash_size)
        if spec.header_flash_size
        else None,
    )
    writes = [(part, payload_path(cell, recipe, src)) for part, src in spec.flash.items()]
    for step in cell.scenario.steps:  # a device library's payload lives in the vfs
        kind, args = step_kind(step)
        if kind == "ota" and args.method == "library":
            vfs.append((payload_path(cell, recipe, args.payload), args.device_path))
            if args.device_lib:
                vfs.append((base / cell.expand(args.device_lib), "/lib"))
    return dataclasses.replace(recipe, vfs_files=tuple(vfs), writes=tuple(writes))


def payload_path(
    cell: Cell, recipe: images.Recipe, payload: str, cache: Path | None = None
) -> Path:
    """A payload kind made from the cell's firmware, or a file relative to the scenario."""
    if payload in PAYLOAD_KINDS:
        plain = dataclasses.replace(recipe, vfs_files=(), writes=())
        return images.payload(plain, payload, cache)
    return cell.scenario.path.parent / cell.expand(payload)


def run_cell(
    cell: Cell,
    *,
    artifacts: Path,
    qemu: str | Path | None = None,
    cache: Path | None = None,
    retries: int = 0,
    progress: Progress | None = None,
) -> CellResult:
    """Run every step of `cell`, retrying QEMU's own crashes up to `retries` times."""
    folder = artifacts / _safe(cell.name)
    reason = cell.skip_reason()
    if reason:
        return CellResult(cell.name, "skipped", reason, artifacts=str(folder))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    assert cell.firmware is not None
    firmware_sha = hashlib.sha256(cell.firmware.read_bytes()).hexdigest()
    start = time.monotonic()
    result = CellResult(cell.name, "failed", artifacts=str(folder))
    for attempt in range(1, retries + 2):
        run_dir = folder if attempt == 1 else folder / f"attempt-{attempt}"
        run = _CellRun(cell, run_dir, qemu, cache, progress)
        error = run.run()
        result.timeline, result.booted = run.timeline, run.booted
        status = "passed" if error is None else "failed"
        result.attempts.append(
            {"attempt": str(attempt), "status": status, "message": str(error or ""),
             "artifacts": str(run_dir)}
        )  # fmt: skip
        if error is None:
            result.status, result.message = "passed", ""
            break
        result.message = str(error)
        if not retryable(error.__cause__) or attempt > retries:
            break
    result.elapsed_s = round(time.monotonic() - start, 3)
    if hashlib.sha256(cell.firmware.read_bytes()).hexdigest() != firmware_sha:
        result.status = "failed"  # the harness only ever reads its inputs: say so loudly
        result.message = f"{cell.firmware} changed during the run (inputs must stay untouched)"
    if len(result.attempts) > 1:
        tried = "; ".join(f"attempt {a['attempt']}: {a['status']}" for a in result.attempts)
        result.message = (result.message + f"\n    retried ({tried})").lstrip("\n")
    (folder / "result.json").write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return result


def retryable(error: BaseException | None) -> bool:
    """Only what is likely not the firmware's doing: QEMU's own crash, or watchdog resets.

    Under emulation the guest's clock keeps running while the host starves QEMU, so a
    watchdog reset (in a boot loop, or in the middle of a REPL or OTA step) is most often
    the host's doing. A firmware that truly trips its watchdog does so again on the
    retry, and fails; the retry only costs time, and is reported.
    """
    if isinstance(error, QemuExited):
        return error.qemu_bug
    if isinstance(error, UnexpectedReset | BootLoop):
        return error.watchdog  # a firmware that really loops on its watchdog loops again
    return False


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\[\]-]+", "_", name)


class _CellRun:
    """One attempt at one cell; step methods are named after the steps."""

    def __init__(
        self,
        cell: Cell,
        run_dir: Path,
        qemu: str | Path | None,
        cache: Path | None,
        progress: Progress | None,
    ):
        self.cell, self.run_dir, self.qemu, self.cache = cell, run_dir, qemu, cache
        self.progress = progress
        self.recipe = recipe_for(cell)
        self.image: Path | None = None
        self.dev: device.Device | None = None
        self.cursor = 0  # serial log lines before this index are consumed by `expect`
        self.guards: list[tuple[str, re.Pattern[str]]] = []
        self.guarded_upto = 0
        self.timeline: list[StepRecord] = []
        self.booted: str | None = None
        self.clock = time.monotonic()

    def run(self) -> StepFailed | None:
        """Run all steps; return the failure (None when every step passed)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        scenario = self.cell.scenario
        with contextlib.ExitStack() as stack:
            self.stack = stack
            for index, step in enumerate(scenario.steps):
                kind, args = step_kind(step)
                record = StepRecord(
                    index + 1, kind, scenario.step_line(index), self._now()
                )  # fmt: skip
                self.timeline.append(record)
                if self.progress:
                    self.progress(self.cell, index, kind)
                try:
                    detail = getattr(self, f"step_{kind}")(self._expanded(args, index))
                    self._check_guards()
                except HarnessError as exc:
                    record.status, record.elapsed_s = "failed", self._now() - record.start_s
                    self._finish(failed=True)
                    failure = StepFailed(self._failure(record, exc))
                    failure.__cause__ = exc
                    return failure
                record.status, record.elapsed_s = "passed", round(self._now() - record.start_s, 3)
                record.detail = detail or {}
                self._write_timeline()
            self._finish(failed=False)
        return None

    # -- steps -------------------------------------------------------------------------
    def step_boot(self, args: Any) -> dict[str, Any]:
        self.image = images.build(self.recipe, self.cache)
        psram = {"auto": None, "on": True, "off": False}[self.cell.scenario.image.psram]
        if self.cell.psram is not None:
            psram = self.cell.psram
        self.dev = self.stack.enter_context(
            device.boot(
                self.image, qemu=self.qemu, psram=psram, run_dir=self.run_dir, data_channel=True
            )
        )
        _write_json(self.run_dir / "flash-before.json", _flash_summary(self.dev.flash))
        if args.until == "started":
            return {}
        if args.until == "prompt":
            self.dev.repl.wait_prompt(args.timeout)
            return {}
        try:
            self.dev.repl.wait_prompt(args.timeout)
        except BootLoop as loop:
            return {"boot_loop": loop.reasons, "detected_s": round(self._now(), 3)}
        raise StepFailed("expected a boot loop, but MicroPython reached the >>> prompt")

    def step_expect(self, args: Any) -> dict[str, Any]:
        patterns = [_pattern(p, args.regex) for p in args.pattern]
        deadline = time.monotonic() + args.timeout
        start, found = self.cursor, []
        for pattern in patterns:
            at = self._wait_line(pattern, self.cursor if args.ordered else start, deadline)
            if at is None:
                what = "in order " if args.ordered and len(patterns) > 1 else ""
                raise StepFailed(
                    f"serial output did not show {pattern.pattern!r} {what}within {args.timeout:g}s"
                )
            found.append(self._line(at))
            if args.ordered:
                self.cursor = at + 1
            else:
                self.cursor = max(self.cursor, at + 1)
        return {"lines": found}

    def step_not_expect(self, args: Any) -> dict[str, Any]:
        dev = self._device()
        self._check_guards()  # earlier guards up to now, then the new ones from the cursor
        lines = dev.console.log.lines
        for text in args.pattern:
            pattern = _pattern(text, args.regex)
            for line in lines[self.cursor :]:
                if pattern.search(ANSI.sub("", line)):
                    raise StepFailed(f"serial output showed {text!r} (not_expect): {line!r}")
            self.guards.append((text, pattern))
            dev.console.forbidden.append(re.compile(pattern.pattern.encode()))
        self.guarded_upto = len(lines)
        return {}

    def step_repl(self, args: Any) -> dict[str, Any]:
        dev = self._device()
        try:
            out = dev.repl.exec(args.code, args.timeout)
        except DeviceError as exc:
            if args.raises and re.search(args.raises, exc.traceback):
                return {"raised": exc.traceback.splitlines()[-1]}
            raise
        if args.raises:
            raise StepFailed(f"expected the code to raise {args.raises!r}; it printed {out!r}")
        if args.expect is not None and out.strip() != args.expect.strip():
            raise StepFailed(f"REPL printed {out.strip()!r}, expected {args.expect.strip()!r}")
        if args.match is not None and not re.search(args.match, out):
            raise StepFailed(f"REPL printed {out.strip()!r}, expected a match for {args.match!r}")
        return {"output": out.strip()}

    def step_put(self, args: Any) -> dict[str, Any]:
        dev = self._device()
        src = self.cell.scenario.path.parent / args.src
        if src.is_file():
            name = args.dst + src.name if args.dst.endswith("/") else args.dst
            placed = [(name, src)]
        elif src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.is_file())
            placed = [(f"{args.dst.rstrip('/')}/{p.relative_to(src).as_posix()}", p) for p in files]
        else:
            raise StepFailed(f"put: no such file or folder {src}")
        for dst, path in placed:
            dev.repl.put(dst, path.read_bytes())
        return {"files": [dst for dst, _ in placed]}

    def step_ota(self, args: Any) -> dict[str, Any]:
        dev = self._device()
        payload = payload_path(self.cell, self.recipe, args.payload, self.cache)
        if args.method == "library":
            report = ota.run_library(
                dev, payload, args.command, confirm=args.confirm, timeout=args.timeout
            )
        else:
            report = ota.update(
                dev, payload, target=args.target, select=args.select, confirm=args.confirm,
                reboot=args.reboot, timeout=args.timeout,
            )  # fmt: skip
        self.booted = report.booted
        detail = report.as_dict()
        detail.pop("output", None)
        if report.method == "harness" and not (
            report.delivered_sha_ok and report.slot_matches_payload
        ):
            raise StepFailed(f"the payload did not arrive intact in {report.target}")
        if args.set_boot_error:
            if not report.set_boot_error or not re.search(
                args.set_boot_error, report.set_boot_error
            ):
                raise StepFailed(
                    f"set_boot() should have failed with {args.set_boot_error!r}; "
                    f"it {'raised ' + report.set_boot_error if report.set_boot_error else 'passed'}"
                )
        elif report.set_boot_error:
            raise StepFailed(f"set_boot() raised {report.set_boot_error}")
        return detail

    def step_reset(self, args: Any) -> dict[str, Any]:
        dev = self._device()
        if args.until == "prompt":
            self.booted, lines = ota.reset(dev, hard=args.kind == "hard", timeout=args.timeout)
            return {"booted": self.booted, "boot_lines": lines}
        dev.hard_reset() if args.kind == "hard" else dev.soft_reset()
        dev.console.expect(RESET_BANNER, args.timeout, during="reset", fail_fast=False)
        return {}

    def step_write_otadata(self, args: Any) -> dict[str, Any]:
        ota.write_otadata(
            self._device(), select=args.select, state=args.state, corrupt=args.corrupt,
            erase=args.erase,
        )  # fmt: skip
        return {"otadata": ota.FlashState.read(self._device().flash).otadata}

    def step_assert_booted(self, args: Any) -> dict[str, Any]:
        self.booted = ota.running(self._device())
        if self.booted != args.partition:
            raise StepFailed(f"running from {self.booted}, expected {args.partition}")
        return {"booted": self.booted}

    def step_assert_otadata(self, args: Any) -> dict[str, Any]:
        state = ota.FlashState.read(self._device().flash)
        if args.states is not None and state.states() != args.states:
            raise StepFailed(f"otadata states are {state.states()}, expected {args.states}")
        if args.selects is not None and state.boot.get("slot") != args.selects:
            raise StepFailed(
                f"otadata selects {state.boot.get('slot')} ({state.boot.get('reason')}), "
                f"expected {args.selects}"
            )
        return {"otadata": state.otadata, "selects": state.boot}

    def step_assert_inspect(self, args: Any) -> dict[str, Any]:
        path = self._inspect_target(args.file)
        value: Any = inspect.report(path)
        for part in args.field.split("."):
            if isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            elif isinstance(value, dict) and part in value:
                value = value[part]
            else:
                raise StepFailed(f"harness inspect --json has no field {args.field!r} for {path}")
        if args.equals is not None and value != args.equals:
            raise StepFailed(f"inspect {args.field} is {value!r}, expected {args.equals!r}")
        if args.contains is not None and args.contains not in str(value):
            raise StepFailed(f"inspect {args.field} is {value!r}, expected it to contain "
                             f"{args.contains!r}")  # fmt: skip
        if args.matches is not None and not re.search(args.matches, str(value)):
            raise StepFailed(f"inspect {args.field} is {value!r}, expected a match for "
                             f"{args.matches!r}")  # fmt: skip
        return {"file": str(path), "value": value}

    # -- helpers -----------------------------------------------------------------------
    def _device(self) -> device.Device:
        if self.dev is None:  # load() rejects this order; kept for API users
            raise StepFailed("no device: this step needs a `boot` step before it")
        return self.dev

    def _inspect_target(self, name: str) -> Path:
        if name in PAYLOAD_KINDS:
            return payload_path(self.cell, self.recipe, name, self.cache)
        if name == "image":
            return self.image or images.build(self.recipe, self.cache)
        if name == "flash":
            return self._device().flash
        if name == "firmware" and self.cell.firmware is not None:
            return self.cell.firmware
        return self.cell.scenario.path.parent / name

    def _expanded(self, args: BaseModel, index: int) -> BaseModel:
        """The step's arguments with ${variables} substituted for this cell."""
        where = ("steps", index)
        update = {}
        for name, value in args:
            if isinstance(value, str):
                update[name] = self.cell.expand(value, where)
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                update[name] = [self.cell.expand(v, where) for v in value]
        return args.model_copy(update=update)

    def _line(self, index: int) -> str:
        return ANSI.sub("", self._device().console.log.lines[index]).strip()

    def _wait_line(self, pattern: re.Pattern[str], since: int, deadline: float) -> int | None:
        """Index of the first serial line at or after `since` matching `pattern`."""
        dev = self._device()
        lines = dev.console.log.lines
        checked = since
        while True:
            for i in range(checked, len(lines)):
                if pattern.search(ANSI.sub("", lines[i])):
                    return i
            checked = len(lines)
            self._check_guards()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            dev.console.pump(min(0.2, remaining), during="expect")

    def _check_guards(self) -> None:
        if not self.guards or self.dev is None:
            return
        lines = self.dev.console.log.lines
        for i in range(self.guarded_upto, len(lines)):
            for text, pattern in self.guards:
                if pattern.search(ANSI.sub("", lines[i])):
                    raise StepFailed(f"serial output showed {text!r} (not_expect): {lines[i]!r}")
        self.guarded_upto = len(lines)

    def _failure(self, record: StepRecord, exc: HarnessError) -> str:
        scenario = self.cell.scenario
        where = f"{scenario.path}:{record.line}"
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
                _write_json(self.run_dir / "flash-after.json", _flash_summary(self.dev.flash))
        self._write_timeline()
        self.stack.close()  # QEMU is reaped here, before the flash file is judged
        for sock in self.run_dir.glob("*.sock"):
            sock.unlink()
        flash = self.run_dir / "flash.bin"
        if not failed and flash.exists():
            flash.unlink()  # 4-16 MB per cell; kept only as evidence of a failure

    def _write_timeline(self) -> None:
        _write_json(self.run_dir / "timeline.json", [dataclasses.asdict(r) for r in self.timeline])

    def _now(self) -> float:
        return round(time.monotonic() - self.clock, 3)


def _pattern(text: str, regex: bool) -> re.Pattern[str]:
    return re.compile(text if regex else re.escape(text))


def _flash_summary(flash: Path) -> dict[str, Any]:
    data = flash.read_bytes()  # 16 MB: read once for both the table and otadata
    table = inspect.parse_table(data)
    state = ota.FlashState.of(data)
    return {
        "partitions": [
            {
                "name": p.name,
                "type": p.type,
                "subtype": p.subtype,
                "offset": f"0x{p.offset:x}",
                "size": p.size,
            }
            for p in table
        ],
        "otadata": state.otadata,
        "otadata_selects": state.boot,
    }


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")
