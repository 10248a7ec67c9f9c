"""Faults: what happens to a board's flash that its firmware did not ask for, and what
the firmware makes of it at the next power-on. One kind, whatever the fault.

A fault is a step whose format names its `Fault` (`Args.FAULT`, `module:Class`, imported
when a handler is first asked for, so the format itself stays free of emulator code).
Every fault step has the same handler: the fault `record`s what the step did to the
flash and leaves the board off (a power cut runs the interrupted step with the flash
chip's operations recorded; a bit flip only powers off), `choose`s its points, and
returns its detail, a `Branches`. The runner (harness.scenario.runner) then takes, for
each point, the flash the fault `flashes` for it, has the fault set the board to
`power_on_from` it, and runs the steps after the fault from that power-on (they start
with `boot`). A fault whose points depend on what each power-on read (`reads`: a power
cut over every distinct state) is sent it (a `Seen`: what it read, and wrote) before it
names its next point; it may then set the points' `covers` and its `coverage` line.
Each point's outcome is a `FaultOutcome` (harness.scenario.results), the same for every
fault: the reports, JUnit and `harness repro` know no fault by name.

Adding a fault is its format (harness.scenario.stepformats, `FAULT` set) and a module
with its `Fault` (docs/architecture.md); a plugin's format names its own module.
"""

from __future__ import annotations

import functools
import importlib
import typing
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

from pydantic import Field

from ..errors import HarnessError
from ..flash import formats
from ..flash.distinct import Seen
from ..flash.ops import changed_stretches
from .results import FaultOutcome, FaultPoint
from .stepformats import Args

if TYPE_CHECKING:
    from ..emulator.device import Device
    from .steps import Handler, Run


@dataclass(kw_only=True)
class Branches:
    """A fault step's detail: the points the fault chose, and each one's outcome once the
    runner has powered on from it. A fault's own detail is a subclass with what it
    recorded (the timeline reads it back as that type)."""

    points: list[FaultPoint] = field(default_factory=list)
    outcomes: list[FaultOutcome] = field(default_factory=list)
    # what the points cover, in a line: `22,752 operations, 310 distinct states, 9
    # power-ons, every state covered` ("" when the fault has nothing to say)
    coverage: str = ""
    # the flash before the fault: for the run, kept out of timeline.json
    before: Annotated[bytes, Field(exclude=True)] = field(default=b"", repr=False)


A_contra = TypeVar("A_contra", bound=Args, contravariant=True)
# the points of a fault, each with its flash; sent what the last power-on read (or None)
Flashes = Generator[tuple[FaultPoint, bytes], Seen | None, None]
R = TypeVar("R", bound=Branches)


class Fault(Protocol[A_contra, R]):
    """One kind of fault, from its step's arguments (`A_contra`) to its detail (`R`)."""

    def record(self, run: Run, args: A_contra) -> R:
        """What the step did to the flash, with the flash before it (`before`); the board
        is left powered off. The return annotation is the detail's type in the timeline
        (so it must resolve at run time)."""
        ...

    def choose(self, args: A_contra, recorded: R) -> list[FaultPoint]:
        """The points to power on from, in order."""
        ...

    def flashes(self, recorded: R) -> Flashes:
        """Each point with the flash it leaves, in order; sent what the power-on from the
        last one read and wrote when `reads` says so (else None). The points are
        `recorded.points`, or, for a fault that chooses as it goes, appended to them."""
        ...

    def reads(self, recorded: R) -> bool:
        """Whether `flashes` is to be sent what each power-on read of the flash."""
        return False

    def power_on_from(self, dev: Device, flash: bytes) -> None:
        """Set the powered-off board to start from `flash` (the `boot` step after the
        fault powers it on): by default, `flash` becomes the board's flash file."""
        dev.flash.write_bytes(flash)


@functools.cache
def fault_of(fmt: type[Args]) -> Fault[Any, Any]:
    """The `Fault` that the format `fmt` names (`module:Class`), made once."""
    assert fmt.FAULT is not None
    module, _, name = fmt.FAULT.partition(":")
    try:
        made: Fault[Any, Any] = getattr(importlib.import_module(module), name)()
    except (ImportError, AttributeError, TypeError) as exc:
        raise HarnessError(f"step `{fmt.KIND}`: its fault {fmt.FAULT} cannot be loaded: "
                           f"{type(exc).__name__}: {exc}") from None  # fmt: skip
    return made


def handler(fmt: type[Args]) -> Handler:
    """The handler of a fault step: record, choose the points, return the detail; the
    runner runs the steps after it once per point."""
    fault = fault_of(fmt)

    def handle(run: Run, args: Any) -> Branches:
        recorded: Branches = fault.record(run, args)
        recorded.points = fault.choose(args, recorded)
        return recorded

    detail = typing.get_type_hints(fault.record).get("return", Branches)
    handle.__annotations__ = {"return": detail}  # the detail's type, for the timeline
    return handle


def changed(before: bytes, after: bytes) -> tuple[dict[str, int], list[tuple[int, int]]]:
    """Sectors that differ: counted per partition, and as (offset, length) stretches."""
    table = formats.with_fs_region(formats.parse_table(before), len(before))
    runs = changed_stretches(before, after, table)
    counts: dict[str, int] = {}
    for name, _, length in runs:
        counts[name] = counts.get(name, 0) + length // formats.SECTOR
    return counts, [(offset, length) for _, offset, length in runs]
