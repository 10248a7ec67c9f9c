"""What each scenario step does: one handler per step format, registered against it.

A handler takes the cell being run (`Run`, implemented by harness.scenario.runner) and
its step's arguments (the `Args` model from harness.scenario.format, variables expanded),
and returns the typed detail the timeline records, or raises `StepFailed` (or any other
HarnessError) with the evidence. The return annotation is the detail's type: the timeline
reads a step's detail back as it (harness.scenario.results). Adding a step is its `Args`
model in stepformats.py, its handler here, and a test. A fault step's handler is the one
of harness.scenario.faults; a plugin's steps come from its hooks (harness.scenario.plugins).
`handlers()` has them all, one handler per registered format (tests/test_scenarios.py
checks it).
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..emulator import hostcommand, ota
from ..emulator.console import Forbidden
from ..emulator.device import Boot, Device
from ..emulator.httpserver import HttpServer
from ..errors import (
    BootLoop,
    DeviceError,
    DeviceTimeout,
    FirmwareCrash,
    GuestStalled,
    HarnessError,
    StepFailed,
)
from ..flash import formats
from ..flash.inspect import examine
from . import faults, plugins, serving, verdict
from .results import Verdict
from .stepformats import (
    STEP_FORMATS,
    Args,
    AssertBootedArgs,
    AssertInspectArgs,
    AssertOtadataArgs,
    AssertVerdictArgs,
    BootArgs,
    ExpectArgs,
    NotExpectArgs,
    OtaArgs,
    PutArgs,
    ReplArgs,
    ResetArgs,
    RunArgs,
    WifiArgs,
    WriteOtadataArgs,
)


class Run(Protocol):
    """The cell being run, as steps see it (harness.scenario.runner.Attempt)."""

    cursor: int  # serial lines before this index are consumed by `expect`
    booted: str | None  # the partition last seen running

    def boot(self) -> Device: ...
    def device(self) -> Device: ...
    def server(self) -> HttpServer: ...
    def staged_slot(self, payload: str) -> str: ...
    def payload(self, name: str) -> Path: ...
    def host_path(self, name: str) -> Path: ...
    def inspect_target(self, name: str) -> Path: ...
    def now(self) -> float: ...


A = TypeVar("A", bound=Args)
Handler = Callable[[Run, Any], object]
HANDLERS: dict[str, Handler] = {}  # the steps written here; `handlers()` has every step's


def handles(fmt: type[A]) -> Callable[[Callable[[Run, A], object]], Callable[[Run, A], object]]:
    """Register a handler for the step whose format is `fmt`."""

    def register(handler: Callable[[Run, A], object]) -> Callable[[Run, A], object]:
        HANDLERS[fmt.KIND] = handler
        return handler

    return register


def _pattern(text: str, regex: bool) -> re.Pattern[str]:
    return re.compile(text if regex else re.escape(text))


# -- details the timeline records ------------------------------------------------------


@dataclass
class BootDetail:
    boot_loop: list[str] | None = None  # the reset reasons, when a boot loop was expected
    detected_s: float | None = None


@dataclass
class Matched:
    """The serial lines an `expect` matched, one per pattern (the report marks them)."""

    lines: list[str] = field(default_factory=list)


@dataclass
class LinesDetail:
    """The device paths `put` wrote."""

    lines: list[str] = field(default_factory=list)


@dataclass
class ReplDetail:
    output: str | None = None
    raised: str | None = None


@dataclass
class OtadataDetail:
    state: formats.FlashState


@dataclass
class InspectDetail:
    file: str
    value: Any


# -- the steps -------------------------------------------------------------------------


@handles(BootArgs)
def boot(run: Run, args: BootArgs) -> BootDetail:
    dev = run.boot()
    if args.until == "started":
        return BootDetail()
    if args.until == "prompt":
        dev.wait_prompt(args.timeout)
        return BootDetail()
    try:
        dev.wait_prompt(args.timeout)
    except BootLoop as loop:
        return BootDetail(loop.reasons, run.now())
    raise StepFailed("expected a boot loop, but MicroPython reached the >>> prompt")


@handles(ExpectArgs)
def expect(run: Run, args: ExpectArgs) -> Matched:
    console = run.device().console
    deadline = time.monotonic() + args.timeout
    start, found = run.cursor, []
    for text in args.pattern:
        pattern = _pattern(text, args.regex)
        since = run.cursor if args.ordered else start
        at = None
        while at is None:
            lines = console.log.lines
            at = next((i for i in range(since, len(lines)) if pattern.search(lines[i])), None)
            since = len(lines)
            remaining = deadline - time.monotonic()
            if at is None and remaining <= 0:
                what = "in order " if args.ordered and len(args.pattern) > 1 else ""
                said = (
                    f"serial output did not show {pattern.pattern!r} {what}within {args.timeout:g}s"
                )
                # asked of QEMU, as every console wait is: a stuck guest is the emulator's
                diagnosed = console.timed_out(DeviceTimeout(said))
                if isinstance(diagnosed, GuestStalled):
                    raise diagnosed
                raise StepFailed(str(diagnosed))
            if at is None:
                console.pump(min(0.2, remaining), during="expect")
        found.append(console.log.lines[at].strip())
        run.cursor = at + 1 if args.ordered else max(run.cursor, at + 1)
    return Matched(found)


@handles(NotExpectArgs)
def not_expect(run: Run, args: NotExpectArgs) -> None:
    console = run.device().console
    for text in args.pattern:  # since the last match, then every line to come
        console.forbid(Forbidden(text, _pattern(text, args.regex)), since=run.cursor)


@handles(ReplArgs)
def repl(run: Run, args: ReplArgs) -> ReplDetail:
    dev = run.device()
    try:
        out = dev.repl.exec(args.code, args.timeout)
    except DeviceError as exc:
        if args.raises and re.search(args.raises, exc.traceback):
            return ReplDetail(raised=exc.traceback.splitlines()[-1])
        raise
    except FirmwareCrash as exc:
        crash = next((line for line in str(exc).splitlines() if args.crashes
                      and re.search(args.crashes, line)), None)  # fmt: skip
        if crash is None:
            raise
        dev.wait_prompt(args.timeout)  # the panic handler restarts the chip
        return ReplDetail(raised=crash.strip())
    if args.crashes:
        raise StepFailed(f"expected the code to crash the firmware ({args.crashes!r}); it "
                         f"printed {out!r}")  # fmt: skip
    if args.raises:
        raise StepFailed(f"expected the code to raise {args.raises!r}; it printed {out!r}")
    if args.expect is not None and out.strip() != args.expect.strip():
        raise StepFailed(f"REPL printed {out.strip()!r}, expected {args.expect.strip()!r}")
    if args.match is not None and not re.search(args.match, out):
        raise StepFailed(f"REPL printed {out.strip()!r}, expected a match for {args.match!r}")
    return ReplDetail(output=out.strip())


@handles(PutArgs)
def put(run: Run, args: PutArgs) -> LinesDetail:
    dev = run.device()
    src = run.host_path(args.src)
    if src.is_file():
        placed = [(args.dst + src.name if args.dst.endswith("/") else args.dst, src)]
    elif src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file())
        placed = [(f"{args.dst.rstrip('/')}/{p.relative_to(src).as_posix()}", p) for p in files]
    else:
        raise StepFailed(f"put: no such file or folder {src}")
    for dst, path in placed:
        dev.repl.put(dst, path.read_bytes())
    return LinesDetail([dst for dst, _ in placed])


@handles(OtaArgs)
def ota_step(run: Run, args: OtaArgs) -> ota.OtaReport:
    dev = run.device()
    target = args.target
    if args.how.stages:  # written before the boot: the slot the device updates must be it
        target = run.staged_slot(args.payload)
        now = args.target or dev.next_update_partition()
        if now != target:
            raise StepFailed(
                f"the payload was staged into {target} before the boot, but the device now "
                f"updates {now}: stage it elsewhere (target:) or use method: harness"
            )
    after = ota.After(args.select, args.reboot, args.confirm)
    payload = run.payload(args.payload)
    if args.method == "download":  # the library fetches it from ${url}
        serving.offer_update(run.server(), payload, args.served)
    request = ota.Request(payload, target, after, args.deadline_s, args.command)
    report = ota.METHODS[args.method](dev, request)
    run.booted = report.booted
    if report.slot_matches_payload is False or report.delivered_sha_ok is False:
        raise StepFailed(f"the payload did not arrive intact in {report.target}")
    if args.set_boot_error:
        if not report.set_boot_error or not re.search(args.set_boot_error, report.set_boot_error):
            did = f"raised {report.set_boot_error}" if report.set_boot_error else "passed"
            raise StepFailed(
                f"set_boot() should have failed with {args.set_boot_error!r}; it {did}"
            )
    elif report.set_boot_error:
        raise StepFailed(f"set_boot() raised {report.set_boot_error}")
    report.output = ""  # the library's output is in serial.log; keep the timeline small
    return report


@dataclass
class WifiDetail:
    """What the board's Wi-Fi came to: ifconfig() (address, netmask, gateway, DNS)."""

    ifconfig: list[str]
    connect_s: float


@handles(WifiArgs)
def wifi(run: Run, args: WifiArgs) -> WifiDetail:
    start = time.monotonic()
    ifconfig = run.device().connect_wifi(args.timeout)
    return WifiDetail(list(ifconfig), round(time.monotonic() - start, 3))


@handles(ResetArgs)
def reset(run: Run, args: ResetArgs) -> Boot:
    boot = run.device().reset(args.kind, until=args.until, timeout=args.timeout)
    if boot.booted is not None:
        run.booted = boot.booted
    return boot


@handles(WriteOtadataArgs)
def write_otadata(run: Run, args: WriteOtadataArgs) -> OtadataDetail:
    dev = run.device()
    ota.write_otadata(dev, select=args.select, state=args.state, corrupt=args.corrupt,
                      erase=args.erase)  # fmt: skip
    return OtadataDetail(dev.flash_state())


# esptool 5's default flasher stub (v2) never starts on this QEMU's UART model (docs:
# known behaviour); the legacy stub does. Set for every `run` command unless the
# scenario's `env` or the user's environment says otherwise.
HOST_ENV_DEFAULTS = {"ESPTOOL_STUB_VERSION": "1"}


@dataclass
class CommandDetail:
    command: str
    exit_code: int
    elapsed_s: float
    output_tail: str
    power_cycles: int  # resets the command made through DTR/RTS


@handles(RunArgs)
def run_command(run: Run, args: RunArgs) -> CommandDetail:
    dev = run.device()
    board = dev.board
    cycles = board.power_cycles
    defaults = {k: v for k, v in HOST_ENV_DEFAULTS.items() if k not in os.environ}
    env = {**defaults, **args.env}
    result = hostcommand.run(args.command, timeout=args.timeout, env=env, cwd=dev.run_dir)
    dev.repl.forget_state()  # the client may have left it in any mode, or reset the board
    dev.console.drain()
    made = board.power_cycles - cycles
    tail = "\n".join(result.output.splitlines()[-15:])
    detail = CommandDetail(result.command, result.exit_code, result.elapsed_s, tail, made)
    if result.exit_code != args.exit_code:
        raise StepFailed(
            f"`{args.command}` exited with {result.exit_code}, expected {args.exit_code}; "
            f"its last output:\n{_indent(tail)}"
        )
    for text in args.expect:
        if text not in result.output:
            raise StepFailed(f"`{args.command}` did not print {text!r}; its last output:\n"
                             f"{_indent(tail)}")  # fmt: skip
    if args.match is not None and not re.search(args.match, result.output):
        raise StepFailed(f"`{args.command}` output has no match for {args.match!r}; its last "
                         f"output:\n{_indent(tail)}")  # fmt: skip
    return detail


def _indent(text: str) -> str:
    return "\n".join(f"    | {line}" for line in text.splitlines())


@handles(AssertBootedArgs)
def assert_booted(run: Run, args: AssertBootedArgs) -> Boot:
    run.booted = run.device().running_partition()
    if run.booted not in args.any_of:
        raise StepFailed(f"running from {run.booted}, expected {' or '.join(args.any_of)}")
    return Boot(run.booted, [])


@handles(AssertVerdictArgs)
def assert_verdict(run: Run, args: AssertVerdictArgs) -> Verdict:
    dev = run.device()
    payload = run.payload(args.payload) if args.payload else None
    known = verdict.Known.of_image(run.inspect_target("image").read_bytes(), payload)
    judged = verdict.judge(dev, known)
    if judged is None:
        raise StepFailed(
            f"assert_verdict reads the ESP32's cache MMU; this board is an {dev.chip.name}"
        )
    if judged.kind not in args.any_of or (args.runs is not None and judged.runs != args.runs):
        where = f" from {args.runs}" if args.runs else ""
        raise StepFailed(f"{judged.line()} ({judged.why}; {judged.holds()}), expected "
                         f"{' or '.join(args.any_of)}{where}")  # fmt: skip
    return judged


@handles(AssertOtadataArgs)
def assert_otadata(run: Run, args: AssertOtadataArgs) -> OtadataDetail:
    state = run.device().flash_state()
    if args.states is not None and state.states() != args.states:
        raise StepFailed(f"otadata states are {state.states()}, expected {args.states}")
    if args.selects is not None and state.boot.slot != args.selects:
        raise StepFailed(
            f"otadata selects {state.boot.slot} ({state.boot.reason}), expected {args.selects}"
        )
    valid = any(r.valid for r in state.otadata or ())
    if args.valid is not None and valid != args.valid:
        said = ", ".join(f"seq {r.seq:#x} {r.state} crc {'ok' if r.crc_ok else 'bad'}"
                         for r in state.otadata or ()) or "no otadata partition"  # fmt: skip
        raise StepFailed(f"otadata has {'no ' if not valid else 'a '}valid record ({said}), "
                         f"expected {'one' if args.valid else 'none'}")  # fmt: skip
    return OtadataDetail(state)


@handles(AssertInspectArgs)
def assert_inspect(run: Run, args: AssertInspectArgs) -> InspectDetail:
    path = run.inspect_target(args.file)
    value: Any = examine(path).to_json()
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
    return InspectDetail(str(path), value)


@functools.cache
def handlers() -> dict[str, Handler]:
    """Every step's handler, by kind: the steps here, each fault's (the one handler of
    harness.scenario.faults), and those installed plugins add; one per format."""
    plugins.load_formats()
    table = {**HANDLERS, **plugins.step_handlers()}
    for kind, fmt in STEP_FORMATS.items():
        if fmt.FAULT is not None:
            table[kind] = faults.handler(fmt)
    missing = [kind for kind in STEP_FORMATS if kind not in table]
    if missing:
        raise HarnessError(f"step `{missing[0]}` has a format but no handler: a plugin that "
                           "adds it returns its handler from harness_step_handlers")  # fmt: skip
    return table
