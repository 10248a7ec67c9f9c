"""Each step's format: the arguments a scenario step may have, and what the step needs.

An `Args` model per step, registered in `STEP_FORMATS` under its `KIND`: its fields are
what the YAML may say; its methods say what the step puts into the image (`files`),
stages into an OTA slot before the boot (`staged`), costs (`cost`), needs of the
firmware (`NEEDS`) and of the host (`alone`, `PORT`); a fault's names the `Fault` that
does it (`FAULT`). Pure pydantic, like the rest of the format: what a step does is
harness.scenario.steps (a fault's, harness.scenario.faults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from ..chips import names_watchdog_reset
from ..flash.formats import OtaState, Select
from ..flash.images import APP_OF
from .results import VerdictKind

# ota: two OTA slots (made by the OTA recipe where the firmware has none); no-ota: the
# firmware's own table has none (the plain ESP32_GENERIC layout); spiram: a SPIRAM build;
# rollback / no-rollback: app rollback (v1.21.0 on) / none (v1.20.0: its app selects an
# update without PENDING_VERIFY); vfs-in-table / vfs-at-boot: the filesystem named in
# the partition table (up to v1.25) / made at boot after the last partition, with the
# flash chip's size queried at start-up (v1.26 on); network: Wi-Fi to the host's server
# (the chip's Wi-Fi QEMU, for the releases it serves: harness.chips.Wifi)
Need = Literal["ota", "no-ota", "spiram", "rollback", "no-rollback", "vfs-in-table",
               "vfs-at-boot", "network"]  # fmt: skip


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# -- what a step asks of the image and the host -------------------------------------


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


class Args(BaseModel):
    """A step's arguments; subclasses are registered by `@step_format` under `KIND`."""

    model_config = ConfigDict(extra="forbid")

    KIND: ClassVar[str]
    SHORTHAND: ClassVar[str | None] = None  # `- step: value` means `- step: {SHORTHAND: value}`
    DEVICE: ClassVar[bool] = True  # needs a running device: it comes after the `boot`
    NEEDS: ClassVar[frozenset[Need]] = frozenset()  # what the firmware and image must offer
    PORT: ClassVar[bool] = False  # serves the UART to host tools (pty and RFC2217)
    # a fault: the `module:Class` of its Fault (harness.scenario.faults), imported when it
    # runs; it leaves the board off, and the steps after it (from a `boot`) run per point
    FAULT: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """A step written `step: value` for its most common argument."""
        if cls.SHORTHAND is not None and not isinstance(value, dict):
            return {cls.SHORTHAND: value}
        return value

    def files(self) -> list[ImageFile]:
        """What it puts into the filesystem when the image is built."""
        return []

    def staged(self) -> Staged | None:
        """What it writes into an OTA slot of the flash file before QEMU starts."""
        return None

    def cost(self) -> int:
        """Roughly how many boots it is worth, for scheduling."""
        return 0

    def alone(self) -> bool:
        """It needs the host to itself (harness.emulator.hostlock)."""
        return False

    def expects_watchdog_reset(self) -> bool:
        """It waits for a watchdog reset (so the watchdogs must run)."""
        return False

    def needs(self) -> frozenset[Need]:
        """What the firmware and image must offer (`NEEDS`, and a wrapped step's)."""
        return self.NEEDS

    def records_flash(self) -> bool:
        """It records the flash chip's operations (the board must be able to)."""
        return False

    def serves(self) -> bool:
        """It serves the UART to host tools (`PORT`, or a wrapped step's)."""
        return self.PORT


A = TypeVar("A", bound=type[Args])
STEP_FORMATS: dict[str, type[Args]] = {}


def step_format(cls: A) -> A:
    """Register an `Args` model as the format of the step `cls.KIND`."""
    STEP_FORMATS[cls.KIND] = cls
    return cls


# -- the steps -------------------------------------------------------------------------


@step_format
class BootArgs(Args):
    """Power on. `until`: the >>> prompt, a detected boot loop, or just started."""

    KIND: ClassVar[str] = "boot"
    SHORTHAND: ClassVar[str | None] = "until"
    DEVICE: ClassVar[bool] = False

    until: Literal["prompt", "boot-loop", "started"] = "prompt"
    timeout: PositiveFloat = 30.0

    def cost(self) -> int:
        return 3 if self.until == "boot-loop" else 1


@step_format
class ExpectArgs(Args):
    """Serial output must show `pattern` (all of a list, in order unless ordered: false)."""

    KIND: ClassVar[str] = "expect"
    SHORTHAND: ClassVar[str | None] = "pattern"

    pattern: list[str] = Field(min_length=1)
    regex: bool = False
    ordered: bool = True
    timeout: PositiveFloat = 10.0
    _list = field_validator("pattern", mode="before")(_listify)

    def expects_watchdog_reset(self) -> bool:
        """A pattern names a watchdog reset of a chip's ROM (`TG1WDT_SYS_RESET`)."""
        return any(names_watchdog_reset(p) for p in self.pattern)


@step_format
class NotExpectArgs(Args):
    """From here on, fail the moment serial output shows `pattern`."""

    KIND: ClassVar[str] = "not_expect"
    SHORTHAND: ClassVar[str | None] = "pattern"

    pattern: list[str] = Field(min_length=1)
    regex: bool = False
    _list = field_validator("pattern", mode="before")(_listify)


@step_format
class ReplArgs(Args):
    """Run code on the device; check its output exactly, by regex, that it raises, or
    that it `crashes` the firmware with a line matching the regex (a panic, `abort()`):
    the board restarts by itself and the step waits for its prompt."""

    KIND: ClassVar[str] = "repl"
    SHORTHAND: ClassVar[str | None] = "code"

    code: str
    expect: str | None = None
    match: str | None = None
    raises: str | None = None
    crashes: str | None = None
    timeout: PositiveFloat = 30.0


@step_format
class PutArgs(Args):
    """Copy a host file or folder (relative to the scenario) onto the device's filesystem."""

    KIND: ClassVar[str] = "put"

    src: str
    dst: str = "/"


# -- OTA methods: what each means for a plan (how each runs: harness.emulator.ota.METHODS) --

OtaMethodName = Literal["harness", "staged", "library", "download"]


@dataclass(frozen=True)
class OtaMethod:
    """One way an update gets into its slot, as the plan and the format see it."""

    name: OtaMethodName
    stages: bool  # written into the slot of the flash file on the host, before the boot
    device_writes: bool  # the device writes the flash: emulated operations a cut can land in
    runs_command: bool  # the user's REPL `command` writes, selects and reboots (a library)
    cost: int  # roughly how many boots it is worth
    timeout: float  # the default bound on the whole step


OTA_HARNESS = OtaMethod("harness", stages=False, device_writes=True, runs_command=False,
                        cost=8, timeout=300.0)  # fmt: skip
# staged: the device only selects the slot and reboots, some 2 s
OTA_STAGED = OtaMethod("staged", stages=True, device_writes=False, runs_command=False,
                       cost=1, timeout=60.0)  # fmt: skip
OTA_LIBRARY = OtaMethod("library", stages=False, device_writes=True, runs_command=True,
                        cost=15, timeout=300.0)  # fmt: skip
# download: the library's `command` downloads the payload over Wi-Fi from the host's
# server (`${url}`), as the report's `ota.update.from_file("http://...")` did
OTA_DOWNLOAD = OtaMethod("download", stages=False, device_writes=True, runs_command=True,
                         cost=12, timeout=300.0)  # fmt: skip
OTA_METHODS: dict[str, OtaMethod] = {
    m.name: m for m in (OTA_HARNESS, OTA_STAGED, OTA_LIBRARY, OTA_DOWNLOAD)
}


class Stall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: NonNegativeInt  # body bytes sent first
    seconds: PositiveFloat


class HttpFault(BaseModel):
    """How the host's server serves a file wrong on purpose (harness.emulator.httpserver):
    `close_after` N body bytes, `stall` {after: N, seconds: S}, a wrong `content_length`,
    `not_found` (404 with an HTML page), `flip` (body offsets inverted in flight), `rate`
    (bytes a second)."""

    model_config = ConfigDict(extra="forbid")

    close_after: NonNegativeInt | None = None
    stall: Stall | None = None
    content_length: NonNegativeInt | None = None
    not_found: bool = False
    flip: list[NonNegativeInt] = Field(default_factory=list)
    rate: PositiveInt | None = None


class ServedFile(HttpFault):
    """A file the host's server serves: `source` is a payload kind (full-image, app, ...),
    `app-of:FILE` or a file relative to the scenario; the rest, how it misbehaves."""

    source: str


@step_format
class OtaArgs(Args):
    """Write a payload into the next OTA slot, select it, reboot.

    payload: full-image | app | truncated-app | corrupt-app (made from this cell's
    firmware, converted as the image is), `app-of:FILE` (or `{app-of: FILE}`: the app
    image of another release, as its .app-bin is; `app-of:${update}`), or a file path.
    method: `harness` (the device writes it, delivered over UART1), `staged` (written
    into the slot of the flash file before the boot, as esptool would; the device only
    selects it and reboots), `library` (a device library's REPL `command`, payload in
    the filesystem) or `download` (the library's `command` downloads `${url}` from the
    host's HTTP server over Wi-Fi, served as `served:` says: a network cell).
    select: `set_boot` (MicroPython's Partition.set_boot(), which validates the app),
    `otadata` (write the otadata record directly, as the bootloader reads it), `none`.
    `timeout` bounds the whole step (default 60 s staged, where the device only selects
    and reboots, some 2 s; 300 s when the device writes).
    """

    KIND: ClassVar[str] = "ota"
    NEEDS: ClassVar[frozenset[Need]] = frozenset({"ota"})

    payload: str
    method: OtaMethodName = OTA_HARNESS.name
    command: str | None = None
    device_lib: str | None = None
    device_path: str = "/fw.bin"
    select: Select = "set_boot"
    set_boot_error: str | None = None
    confirm: bool = False
    reboot: bool = True
    target: str | None = None
    timeout: PositiveFloat | None = None
    served: HttpFault | None = None  # method download: how the server serves the payload

    @field_validator("payload", mode="before")
    @classmethod
    def _app_of(cls, value: Any) -> Any:
        """`payload: {app-of: FILE}` is `app-of:FILE`."""
        if isinstance(value, dict) and list(value) == [APP_OF[:-1]]:
            return APP_OF + str(value[APP_OF[:-1]])
        return value

    @property
    def how(self) -> OtaMethod:
        """What its method means (OTA_METHODS)."""
        return OTA_METHODS[self.method]

    @property
    def deadline_s(self) -> float:
        return self.timeout or self.how.timeout

    @model_validator(mode="after")
    def _library_needs_command(self) -> OtaArgs:
        if self.how.runs_command and not self.command:
            raise ValueError(f"method: {self.method} needs a `command` (the user's REPL line)")
        if self.how.runs_command and self.select != "set_boot":
            raise ValueError(f"method: {self.method} selects the slot itself; drop `select`")
        if self.served is not None and self.method != OTA_DOWNLOAD.name:
            raise ValueError("`served` is how a download is served: it needs method: download")
        return self

    def needs(self) -> frozenset[Need]:
        """A download needs the network."""
        return self.NEEDS | ({"network"} if self.method == OTA_DOWNLOAD.name else set())

    def files(self) -> list[ImageFile]:
        """A device library's payload lives in the filesystem (a download's on the host's
        server), the library under /lib."""
        if not self.how.runs_command:
            return []
        files = []
        if self.method != OTA_DOWNLOAD.name:
            files.append(ImageFile(self.payload, self.device_path, payload=True))
        if self.device_lib:
            files.append(ImageFile(self.device_lib, "/lib", payload=False))
        return files

    def staged(self) -> Staged | None:
        return Staged(self.payload, self.target) if self.how.stages else None

    def cost(self) -> int:
        """A device-side write is some 8 boots' worth of emulated flash operations."""
        return self.how.cost

    def alone(self) -> bool:
        """Device-side writes: thousands of flash operations, each with the cache off on
        both CPUs; beside another emulation, QEMU 8.0 let the other CPU in ("Cache
        disabled but cached memory region accessed", seen once in a parallel run)."""
        return self.how.device_writes

    def cut_before_reboot(self) -> OtaArgs:
        """The step as a power cut interrupts it: where the harness reboots after the
        write, it stops before that reboot (the power-on after the cut is it); a user's
        command reboots by itself."""
        return self if self.how.runs_command else self.model_copy(update={"reboot": False})


@step_format
class WifiArgs(Args):
    """Connect to the emulated access point (the Wi-Fi QEMU's open "Open Wifi") and wait
    for an address: the host's server is then `${http}`, at 10.0.2.2."""

    KIND: ClassVar[str] = "wifi"
    SHORTHAND: ClassVar[str | None] = "action"
    NEEDS: ClassVar[frozenset[Need]] = frozenset({"network"})

    action: Literal["connect"] = "connect"
    timeout: PositiveFloat = 30.0

    def cost(self) -> int:
        return 2


@step_format
class ResetArgs(Args):
    """Reset: `soft` is machine.reset() from the app, `hard` is QMP system_reset (EN pin)."""

    KIND: ClassVar[str] = "reset"
    SHORTHAND: ClassVar[str | None] = "kind"

    kind: Literal["soft", "hard"] = "soft"
    until: Literal["prompt", "started"] = "prompt"
    timeout: PositiveFloat = 60.0

    def cost(self) -> int:
        return 1


@step_format
class WriteOtadataArgs(Args):
    """Write otadata from the device: select a slot with a state, corrupt it, or erase it."""

    KIND: ClassVar[str] = "write_otadata"
    NEEDS: ClassVar[frozenset[Need]] = frozenset({"ota"})

    select: str | None = None
    state: OtaState = "UNDEFINED"
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


@step_format
class RunArgs(Args):
    """Run a host command against the board: `${port}` is its pty, `${rfc2217}` its
    RFC2217 URL (esptool's resets work there). It runs in the cell's run folder (its
    artifacts); host paths in a scenario are absolute (`${scenario_dir}`). The exit status
    must be `exit_code`; the output must contain each of `expect` and match `match`.
    `timeout` bounds it. After it, nothing is asked of the board: the next steps say what
    it should show (a command may leave it unable to boot, which a reproduction is about).
    """

    KIND: ClassVar[str] = "run"
    SHORTHAND: ClassVar[str | None] = "command"
    PORT: ClassVar[bool] = True

    command: str
    exit_code: int = 0
    expect: list[str] = Field(default_factory=list)
    match: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    timeout: PositiveFloat = 120.0
    _list = field_validator("expect", mode="before")(_listify)

    def cost(self) -> int:
        return 3

    def alone(self) -> bool:
        """The user's own tools time their serial traffic; a starved QEMU misses it."""
        return True


@step_format
class AssertBootedArgs(Args):
    """The partition MicroPython runs from, as the device reports it (or one of a list)."""

    KIND: ClassVar[str] = "assert_booted"
    SHORTHAND: ClassVar[str | None] = "partition"

    partition: str | list[str]

    @property
    def any_of(self) -> list[str]:
        return [self.partition] if isinstance(self.partition, str) else self.partition


@step_format
class AssertOtadataArgs(Args):
    """otadata in the live flash: record states (sector 0, 1), the slot it selects, and/or
    `valid: true`, a record the bootloader accepts (seq set, CRC right, state usable), so
    that otadata itself, not a fallback, chooses the app."""

    KIND: ClassVar[str] = "assert_otadata"
    SHORTHAND: ClassVar[str | None] = "states"
    NEEDS: ClassVar[frozenset[Need]] = frozenset({"ota"})

    states: list[str] | None = None
    selects: str | None = None
    valid: bool | None = None


@step_format
class AssertVerdictArgs(Args):
    """What runs, judged without asking the firmware (docs/scenarios.md, the verdict): the
    partition the cache MMU maps the code from, and which known image it holds: the `old
    app` (the one the cell's image boots), the `new app` (`payload`, when given: a payload
    kind or file), an `other app`, or `nothing` running; one of a list, and from the
    partition `runs` when given."""

    KIND: ClassVar[str] = "assert_verdict"
    SHORTHAND: ClassVar[str | None] = "kind"

    kind: VerdictKind | list[VerdictKind]
    payload: str | None = None
    runs: str | None = None

    @property
    def any_of(self) -> list[VerdictKind]:
        return self.kind if isinstance(self.kind, list) else [self.kind]


@step_format
class AssertInspectArgs(Args):
    """A field of `harness inspect --json` (dotted path) for a payload kind, `image`,
    `flash` (the live flash now), `firmware` or a file."""

    KIND: ClassVar[str] = "assert_inspect"
    DEVICE: ClassVar[bool] = False

    file: str = "full-image"
    field: str
    equals: Any = None
    contains: str | None = None
    matches: str | None = None


@step_format
class PowerCutArgs(Args):
    """Cut the power: now (`power_cut: {}`), or during a step that writes flash (`ota`,
    `repl`, `put` or `run`, written under its own name) after chosen flash operations of
    it, counted as the flash chip sees them. The steps after it run once per cut point,
    from a power-on (`boot`) of the flash as the cut left it; the step passes only if
    every point does. Points: `sweep: all` covers every distinct flash state the step
    passes through, booting only those that differ, on a byte an earlier power-on read,
    from every state booted before (docs/architecture.md; `sweep: distinct` boots every
    distinct state, the brute force that checks it; `torn: true` adds, inside each
    operation that changes a bit, the state a torn erase or program leaves, by a model
    drawn by `seed`: harness.flash.torn; `depth: 2` also cuts, the same way, the flash
    operations each power-on after a cut makes, as the bootloader's otadata update,
    MicroPython's first-boot filesystem and littlefs's commits); `sweep: K` spreads K over the
    step's operations, plus its
    boundaries (before the first operation, before otadata is touched and after each of
    its operations, after the last); `at:` names operation counts (0: before the first);
    `within: PARTITION` (or `partition table`, `bootloader`) cuts while it is
    half-written (after each of its operations that changes a bit, but the last). An
    `ota` step (method harness) is cut before its reboot: the power-on after the cut is
    it. A `run` step is recorded across the resets its tool makes. `by: time` (taken by
    itself where QEMU cannot report its flash operations) cuts a live rerun of the step at
    K moments spread over its duration instead, each from a power-on of the flash before
    it, and reports the state each left.
    """

    KIND: ClassVar[str] = "power_cut"
    FAULT: ClassVar[str | None] = "harness.scenario.powercut:PowerCut"

    ota: OtaArgs | None = None
    repl: ReplArgs | None = None
    put: PutArgs | None = None
    run: RunArgs | None = None
    by: Literal["operations", "time"] = "operations"
    sweep: PositiveInt | Literal["all", "distinct"] | None = None
    at: list[NonNegativeInt] | None = None
    within: str | None = None
    torn: bool = False
    seed: int = 0
    depth: Literal[1, 2] = 1

    @model_validator(mode="after")
    def _one_step_one_choice(self) -> PowerCutArgs:
        steps = [k for k in ("ota", "repl", "put", "run") if getattr(self, k) is not None]
        chosen = [k for k in ("sweep", "at", "within") if getattr(self, k) is not None]
        if not steps and not chosen:
            return self  # cut now
        if len(steps) != 1:
            raise ValueError(
                "power_cut names the one step it interrupts: `ota:`, `repl:`, `put:` or "
                "`run:` (or nothing, `power_cut: {}`, to cut now)"
            )
        if len(chosen) != 1:
            raise ValueError("power_cut needs one of `sweep: K`, `at: [N, ...]`, `within: "
                             "PARTITION`")  # fmt: skip
        if (self.torn or self.depth == 2) and self.sweep not in ("all", "distinct"):
            what = ("torn: true cuts inside every operation" if self.torn
                    else "depth: 2 cuts every operation of the power-ons too")  # fmt: skip
            raise ValueError(f"{what}: it takes `sweep: all` (or `sweep: distinct`)")
        if self.by == "time" and not isinstance(self.sweep, int):
            raise ValueError("a cut by time takes `sweep: K` (K points spread over the step's "
                             "duration)")  # fmt: skip
        if self.ota is not None and not self.ota.how.device_writes:
            writers = " or ".join(m.name for m in OTA_METHODS.values() if m.device_writes)
            raise ValueError(f"a {self.ota.method} write makes no emulated flash writes, so "
                             f"there is nothing to cut: use method: {writers}")  # fmt: skip
        return self

    @property
    def interrupted(self) -> Args | None:
        """The step the cut interrupts; None: the cut comes now, between steps."""
        return self.ota or self.repl or self.put or self.run

    def files(self) -> list[ImageFile]:
        return self.interrupted.files() if self.interrupted else []

    def cost(self) -> int:
        if self.interrupted is None:
            return 1
        if self.sweep == "all":  # the power-ons the classes come to: a handful, typically
            return self.interrupted.cost() + 20
        if self.sweep == "distinct":  # every distinct state booted: a check of `all`
            return self.interrupted.cost() + 100
        points = self.sweep + 4 if self.sweep else len(self.at or ()) or 4
        return self.interrupted.cost() + points

    def alone(self) -> bool:
        return self.interrupted.alone() if self.interrupted else False

    def needs(self) -> frozenset[Need]:
        return self.interrupted.needs() if self.interrupted else frozenset()

    def records_flash(self) -> bool:
        return True

    def serves(self) -> bool:
        return self.interrupted.serves() if self.interrupted else False


@step_format
class BitFlipArgs(Args):
    """Bits of a partition's bytes flipped while the board is off, as a NOR flash cell's
    retention loss flips them: a programmed 0 reads 1. `bits` of the partition's 0 bits
    are drawn by `seed`, or one bit in each byte at `offsets` (from the partition's
    start). The board is powered off first; the steps after it run once per trial
    (`trials: K`: seeds `seed` to `seed+K-1`), each from a power-on (`boot`) of the flash
    with that trial's bits flipped; the step passes only if every trial does.
    `partition`: a name in the table, or the filesystem MicroPython makes after the last
    partition (v1.26 on).
    """

    KIND: ClassVar[str] = "bit_flip"
    SHORTHAND: ClassVar[str | None] = "partition"
    FAULT: ClassVar[str | None] = "harness.scenario.bitflip:BitFlip"

    partition: str
    bits: PositiveInt = 1
    offsets: list[NonNegativeInt] | None = Field(default=None, min_length=1)
    seed: int = 0
    trials: PositiveInt = 1

    @model_validator(mode="after")
    def _bits_or_offsets(self) -> BitFlipArgs:
        if self.offsets is not None and "bits" in self.model_fields_set:
            raise ValueError("bit_flip takes `bits: N` (drawn by the seed) or `offsets:` (one "
                             "bit in each), not both")  # fmt: skip
        return self

    @property
    def count(self) -> int:
        """How many bits each trial flips."""
        return len(self.offsets) if self.offsets is not None else self.bits

    def cost(self) -> int:
        return self.trials


@step_format
class DownloadDiesArgs(Args):
    """The connection of a download update (`ota:` with method: download) dies part way:
    the host's server closes it after chosen bytes of the payload. `sweep: K` spreads K
    points over the payload, plus its ends (0 bytes and all but one); `at:` names byte
    counts. Per point, the board powers on from the flash before the step, connects, and
    runs the download; the steps after it (from a `boot`) run from the flash it left,
    once per point, like a power cut's."""

    KIND: ClassVar[str] = "download_dies"
    FAULT: ClassVar[str | None] = "harness.scenario.download:DownloadDies"

    ota: OtaArgs
    sweep: PositiveInt | None = None
    at: list[NonNegativeInt] | None = None

    @model_validator(mode="after")
    def _one_choice(self) -> DownloadDiesArgs:
        if (self.sweep is None) == (self.at is None):
            raise ValueError("download_dies needs one of `sweep: K`, `at: [BYTES, ...]`")
        if self.ota.method != OTA_DOWNLOAD.name:
            raise ValueError("download_dies interrupts a download: give its `ota` method: download")
        return self

    def files(self) -> list[ImageFile]:
        return self.ota.files()

    def cost(self) -> int:
        points = (self.sweep + 2) if self.sweep else len(self.at or ())
        return self.ota.cost() * points

    def alone(self) -> bool:
        return self.ota.alone()

    def needs(self) -> frozenset[Need]:
        return self.ota.needs()
