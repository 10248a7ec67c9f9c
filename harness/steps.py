"""Scenario steps: one registry, one place per step.

Each step is a handler decorated with `@step(...)`: its `args` annotation is the
pydantic model a scenario's YAML is validated against, its return value is the typed
detail the timeline records, and the decorator says whether it needs a running device,
what OTA slots or files it asks of the image. The scenario format (its `Step` union and
JSON Schema), the order check and the runner all read `STEPS`; adding a step is one
function here plus its test.

Handlers talk to the cell being run through `Run` (implemented by harness.runner):
the device, the cell's payloads and files, and the serial cursor `expect` moves.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator, model_validator

from . import formats, hostcommand, ota
from .console import Forbidden
from .device import Boot, Device
from .errors import BootLoop, DeviceError, StepFailed

# -- what handlers see of the run ------------------------------------------------------


class Run(Protocol):
    """The cell being run, as steps see it (harness.runner.CellRun)."""

    cursor: int  # serial lines before this index are consumed by `expect`
    booted: str | None  # the partition last seen running

    def boot(self) -> Device: ...
    def device(self) -> Device: ...
    def staged_slot(self, payload: str) -> str: ...
    def payload(self, name: str) -> Path: ...
    def host_path(self, name: str) -> Path: ...
    def inspect_target(self, name: str) -> Path: ...
    def now(self) -> float: ...


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ImageFile:
    """A file a step needs in the filesystem at build time: a payload kind or a host path."""

    source: str
    device_path: str
    payload: bool  # `source` is a payload kind or file made for the cell, else a host path


@dataclass(frozen=True)
class Staged:
    """A payload a step wants in an OTA slot before the boot (its `target`, or the next)."""

    payload: str
    target: str | None


A = TypeVar("A", bound=Args)


@dataclass(frozen=True)
class StepType:
    kind: str
    args: type[Args]
    run: Callable[[Run, Any], object]
    device: bool  # needs a running device: must come after `boot`
    needs: frozenset[str]  # what the image must offer: "ota" (two OTA slots)
    files: Callable[[Any], list[ImageFile]]  # what it puts into the filesystem at build time
    stages: Callable[[Any], Staged | None]  # what it writes into a slot before the boot
    cost: Callable[[Any], int]  # roughly how many boots it is worth (for scheduling)
    port: bool  # serves the UART to host tools: the cell boots with a pty and RFC2217
    alone: Callable[[Any], bool]  # needs the host to itself (harness.hostlock)


STEPS: dict[str, StepType] = {}


def step(
    kind: str,
    *,
    device: bool = True,
    needs: tuple[str, ...] = (),
    files: Callable[[Any], list[ImageFile]] = lambda args: [],
    stages: Callable[[Any], Staged | None] = lambda args: None,
    cost: Callable[[Any], int] = lambda args: 0,
    port: bool = False,
    alone: Callable[[Any], bool] = lambda args: False,
) -> Callable[[Callable[[Run, A], object]], Callable[[Run, A], object]]:
    """Register a handler as the step `kind`; its `args` annotation is the step's format."""

    def register(handler: Callable[[Run, A], object]) -> Callable[[Run, A], object]:
        args = get_type_hints(handler)["args"]
        STEPS[kind] = StepType(
            kind, args, handler, device, frozenset(needs), files, stages, cost, port, alone
        )
        return handler

    return register


def _shorthand(key: str) -> Any:
    """Let a step be written `step: value` for its most common argument."""

    def wrap(value: Any) -> Any:
        return value if isinstance(value, dict) else {key: value}

    return model_validator(mode="before")(cast(Any, classmethod(lambda cls, v: wrap(v))))


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _pattern(text: str, regex: bool) -> re.Pattern[str]:
    return re.compile(text if regex else re.escape(text))


# -- details the timeline records ------------------------------------------------------


@dataclass
class BootDetail:
    boot_loop: list[str] | None = None  # the reset reasons, when a boot loop was expected
    detected_s: float | None = None


@dataclass
class LinesDetail:
    """The serial lines an `expect` matched, or the device paths `put` wrote."""

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


class BootArgs(Args):
    """Power on. `until`: the >>> prompt, a detected boot loop, or just started."""

    until: Literal["prompt", "boot-loop", "started"] = "prompt"
    timeout: PositiveFloat = 30.0
    _short = _shorthand("until")


@step("boot", device=False, cost=lambda args: 3 if args.until == "boot-loop" else 1)
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


class ExpectArgs(Args):
    """Serial output must show `pattern` (all of a list, in order unless ordered: false)."""

    pattern: list[str] = Field(min_length=1)
    regex: bool = False
    ordered: bool = True
    timeout: PositiveFloat = 10.0
    _short = _shorthand("pattern")
    _list = field_validator("pattern", mode="before")(_listify)


@step("expect")
def expect(run: Run, args: ExpectArgs) -> LinesDetail:
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
                raise StepFailed(
                    f"serial output did not show {pattern.pattern!r} {what}within {args.timeout:g}s"
                )
            if at is None:
                console.pump(min(0.2, remaining), during="expect")
        found.append(console.log.lines[at].strip())
        run.cursor = at + 1 if args.ordered else max(run.cursor, at + 1)
    return LinesDetail(found)


class NotExpectArgs(Args):
    """From here on, fail the moment serial output shows `pattern`."""

    pattern: list[str] = Field(min_length=1)
    regex: bool = False
    _short = _shorthand("pattern")
    _list = field_validator("pattern", mode="before")(_listify)


@step("not_expect")
def not_expect(run: Run, args: NotExpectArgs) -> None:
    console = run.device().console
    for text in args.pattern:  # since the last match, then every line to come
        console.forbid(Forbidden(text, _pattern(text, args.regex)), since=run.cursor)


class ReplArgs(Args):
    """Run code on the device; check its output exactly, by regex, or that it raises."""

    code: str
    expect: str | None = None
    match: str | None = None
    raises: str | None = None
    timeout: PositiveFloat = 30.0
    _short = _shorthand("code")


@step("repl")
def repl(run: Run, args: ReplArgs) -> ReplDetail:
    try:
        out = run.device().repl.exec(args.code, args.timeout)
    except DeviceError as exc:
        if args.raises and re.search(args.raises, exc.traceback):
            return ReplDetail(raised=exc.traceback.splitlines()[-1])
        raise
    if args.raises:
        raise StepFailed(f"expected the code to raise {args.raises!r}; it printed {out!r}")
    if args.expect is not None and out.strip() != args.expect.strip():
        raise StepFailed(f"REPL printed {out.strip()!r}, expected {args.expect.strip()!r}")
    if args.match is not None and not re.search(args.match, out):
        raise StepFailed(f"REPL printed {out.strip()!r}, expected a match for {args.match!r}")
    return ReplDetail(output=out.strip())


class PutArgs(Args):
    """Copy a host file or folder (relative to the scenario) onto the device's filesystem."""

    src: str
    dst: str = "/"


@step("put")
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


class OtaArgs(Args):
    """Write a payload into the next OTA slot, select it, reboot.

    payload: full-image | app | truncated-app | corrupt-app (made from this cell's
    firmware, converted as the image is), or a file path. method: `harness` (the device
    writes it, delivered over UART1), `staged` (written into the slot of the flash file
    before the boot, as esptool would; the device only selects it and reboots) or
    `library` (a device library's REPL `command`, payload in the filesystem).
    select: `set_boot` (MicroPython's Partition.set_boot(), which validates the app),
    `otadata` (write the otadata record directly, as the bootloader reads it), `none`.
    `timeout` bounds the whole step (default 60 s staged, where the device only selects
    and reboots, some 2 s; 300 s when the device writes).
    """

    payload: str
    method: Literal["harness", "staged", "library"] = "harness"
    command: str | None = None
    device_lib: str | None = None
    device_path: str = "/fw.bin"
    select: ota.Select = "set_boot"
    set_boot_error: str | None = None
    confirm: bool = False
    reboot: bool = True
    target: str | None = None
    timeout: PositiveFloat | None = None

    @property
    def deadline_s(self) -> float:
        return self.timeout or (60.0 if self.method == "staged" else 300.0)

    @model_validator(mode="after")
    def _library_needs_command(self) -> OtaArgs:
        if self.method == "library" and not self.command:
            raise ValueError("method: library needs a `command` (the user's REPL line)")
        if self.method == "library" and self.select != "set_boot":
            raise ValueError("method: library selects the slot itself; drop `select`")
        return self


def _ota_files(args: OtaArgs) -> list[ImageFile]:
    """A device library's payload lives in the filesystem, the library under /lib."""
    if args.method != "library":
        return []
    files = [ImageFile(args.payload, args.device_path, payload=True)]
    if args.device_lib:
        files.append(ImageFile(args.device_lib, "/lib", payload=False))
    return files


def _ota_stages(args: OtaArgs) -> Staged | None:
    return Staged(args.payload, args.target) if args.method == "staged" else None


def _ota_cost(args: OtaArgs) -> int:
    """A device-side write is some 8 boots' worth of emulated flash operations."""
    return {"staged": 1, "harness": 8, "library": 15}[args.method]


def _ota_alone(args: OtaArgs) -> bool:
    """Device-side writes: thousands of flash operations, each with the cache off on both
    CPUs; beside another emulation, QEMU 8.0 let the other CPU in ("Cache disabled but
    cached memory region accessed", seen once in a parallel run)."""
    return args.method != "staged"


@step("ota", needs=("ota",), files=_ota_files, stages=_ota_stages, cost=_ota_cost, alone=_ota_alone)
def ota_step(run: Run, args: OtaArgs) -> ota.OtaReport:
    dev = run.device()
    payload = run.payload(args.payload)
    if args.method == "staged":
        target = run.staged_slot(args.payload)
        now = args.target or dev.next_update_partition()
        if now != target:
            raise StepFailed(
                f"the payload was staged into {target} before the boot, but the device now "
                f"updates {now}: stage it elsewhere (target:) or use method: harness"
            )
        report = ota.staged(
            dev, payload, target, select=args.select, confirm=args.confirm,
            reboot=args.reboot, timeout=args.deadline_s,
        )  # fmt: skip
    elif args.method == "library":
        assert args.command is not None  # the model checked it
        report = ota.run_library(dev, payload, args.command, confirm=args.confirm,
                                 timeout=args.deadline_s)  # fmt: skip
    else:
        report = ota.update(
            dev, payload, target=args.target, select=args.select, confirm=args.confirm,
            reboot=args.reboot, timeout=args.deadline_s,
        )  # fmt: skip
    run.booted = report.booted
    intact = report.slot_matches_payload and report.delivered_sha_ok is not False
    if report.method != "library" and not intact:
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


class ResetArgs(Args):
    """Reset: `soft` is machine.reset() from the app, `hard` is QMP system_reset (EN pin)."""

    kind: Literal["soft", "hard"] = "soft"
    until: Literal["prompt", "started"] = "prompt"
    timeout: PositiveFloat = 60.0
    _short = _shorthand("kind")


@step("reset", cost=lambda args: 1)
def reset(run: Run, args: ResetArgs) -> Boot:
    boot = run.device().reset(args.kind, until=args.until, timeout=args.timeout)
    if boot.booted is not None:
        run.booted = boot.booted
    return boot


class WriteOtadataArgs(Args):
    """Write otadata from the device: select a slot with a state, corrupt it, or erase it."""

    select: str | None = None
    state: formats.OtaState = "UNDEFINED"
    corrupt: bool = False
    erase: bool = False

    @model_validator(mode="before")
    @classmethod
    def _word(cls, value: Any) -> Any:
        if value in ("corrupt", "erase"):
            return {value: True}
        return value

    @model_validator(mode="after")
    def _one_action(self) -> WriteOtadataArgs:
        if sum([self.select is not None, self.corrupt, self.erase]) != 1:
            raise ValueError("write_otadata takes one of: select: SLOT, corrupt, erase")
        return self


@step("write_otadata", needs=("ota",))
def write_otadata(run: Run, args: WriteOtadataArgs) -> OtadataDetail:
    dev = run.device()
    ota.write_otadata(dev, select=args.select, state=args.state, corrupt=args.corrupt,
                      erase=args.erase)  # fmt: skip
    return OtadataDetail(dev.flash_state())


# esptool 5's default flasher stub (v2) never starts on this QEMU's UART model (docs:
# known behaviour); the legacy stub does. Set for every `run` command unless the
# scenario's `env` or the user's environment says otherwise.
HOST_ENV_DEFAULTS = {"ESPTOOL_STUB_VERSION": "1"}


class RunArgs(Args):
    """Run a host command against the board: `${port}` is its pty, `${rfc2217}` its
    RFC2217 URL (esptool's resets work there). It runs in the cell's run folder (its
    artifacts); host paths in a scenario are absolute (`${scenario_dir}`). The exit status
    must be `exit_code`; the output must contain each of `expect` and match `match`.
    `timeout` bounds it. After it, nothing is asked of the board: the next steps say what
    it should show (a command may leave it unable to boot, which a reproduction is about).
    """

    command: str
    exit_code: int = 0
    expect: list[str] = Field(default_factory=list)
    match: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    timeout: PositiveFloat = 120.0
    _short = _shorthand("command")
    _list = field_validator("expect", mode="before")(_listify)


@dataclass
class CommandDetail:
    command: str
    exit_code: int
    elapsed_s: float
    output_tail: str
    power_cycles: int  # resets the command made through DTR/RTS


@step("run", port=True, cost=lambda args: 3, alone=lambda args: True)
def run_command(run: Run, args: RunArgs) -> CommandDetail:
    dev = run.device()
    board = dev.board
    assert board is not None  # the runner serves the port to every cell with a run step
    cycles = board.cycles
    defaults = {k: v for k, v in HOST_ENV_DEFAULTS.items() if k not in os.environ}
    env = {**defaults, **args.env}
    result = hostcommand.run(args.command, timeout=args.timeout, env=env, cwd=dev.run_dir)
    dev.repl.forget_state()  # the client may have left it in any mode, or reset the board
    dev.console.drain()
    made = board.cycles - cycles
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


class AssertBootedArgs(Args):
    """The partition MicroPython runs from, as the device reports it."""

    partition: str
    _short = _shorthand("partition")


@step("assert_booted")
def assert_booted(run: Run, args: AssertBootedArgs) -> Boot:
    run.booted = run.device().running_partition()
    if run.booted != args.partition:
        raise StepFailed(f"running from {run.booted}, expected {args.partition}")
    return Boot(run.booted, [])


class AssertOtadataArgs(Args):
    """otadata in the live flash: record states (sector 0, 1) and/or the slot it selects."""

    states: list[str] | None = None
    selects: str | None = None
    _short = _shorthand("states")


@step("assert_otadata", needs=("ota",))
def assert_otadata(run: Run, args: AssertOtadataArgs) -> OtadataDetail:
    state = run.device().flash_state()
    if args.states is not None and state.states() != args.states:
        raise StepFailed(f"otadata states are {state.states()}, expected {args.states}")
    if args.selects is not None and state.boot.slot != args.selects:
        raise StepFailed(
            f"otadata selects {state.boot.slot} ({state.boot.reason}), expected {args.selects}"
        )
    return OtadataDetail(state)


class AssertInspectArgs(Args):
    """A field of `harness inspect --json` (dotted path) for a payload kind, `image`,
    `flash` (the live flash now), `firmware` or a file."""

    file: str = "full-image"
    field: str
    equals: Any = None
    contains: str | None = None
    matches: str | None = None


@step("assert_inspect", device=False)
def assert_inspect(run: Run, args: AssertInspectArgs) -> InspectDetail:
    from .inspector import examine

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
