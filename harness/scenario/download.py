"""A download update whose connection dies part way: a `Fault` (harness.scenario.faults).

The host's server closes the connection after chosen bytes of the payload, as a network
that drops does. Unlike a power cut's, a point cannot be rebuilt from one recorded run:
what the library does with a short body (write what came, check the length, call
set_boot()) is the subject. So each point is a live run: the board powers on from the
flash before the step, joins the network, and runs the download with the server set to
close there; the flash it leaves is the point's, and the steps after the fault run from
a power-on of it. The point's `did` says what the library made of it, in its own words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field

from ..errors import DeviceError, HarnessError, StepFailed
from ..flash.inputs import read_input
from .faults import Branches, Fault, Flashes
from .results import FaultPoint
from .stepformats import DownloadDiesArgs, HttpFault
from .steps import Run, handlers


@dataclass(kw_only=True)
class Interrupted(Branches):
    """The download_dies step's detail: the payload's length, and per point what the
    library said (with, from `Branches`, the points and each one's outcome)."""

    length: int
    said: dict[int, str] = field(default_factory=dict)  # bytes sent -> the library's words
    found: Annotated[dict[int, bytes], Field(exclude=True)] = field(default_factory=dict,
                                                                     repr=False)  # fmt: skip


class DownloadDies(Fault[DownloadDiesArgs, Interrupted]):
    """The connection closes after chosen bytes of a download update's payload."""

    def record(self, run: Run, args: DownloadDiesArgs) -> Interrupted:
        """Each point live: power on from the flash before, connect, download, cut."""
        dev = run.device()
        payload = run.payload(args.ota.payload)
        length = len(read_input(payload))
        dev.board.pause()
        before = dev.flash.read_bytes()
        dev.board.power_cut()
        recorded = Interrupted(length=length, before=before)
        for sent in points(args, length):
            dev.flash.write_bytes(before)
            dev.power_on()
            dev.wait_prompt(60)
            dev.connect_wifi()
            recorded.said[sent] = _download(run, args, sent)
            dev.board.pause()
            recorded.found[sent] = dev.flash.read_bytes()
            dev.board.power_cut()
        return recorded

    def choose(self, args: DownloadDiesArgs, recorded: Interrupted) -> list[FaultPoint]:
        return [_point(n, recorded.length, recorded.said[n]) for n in sorted(recorded.found)]

    def flashes(self, recorded: Interrupted) -> Flashes:
        points = {p.key: p for p in recorded.points}
        yield from ((points[n], recorded.found[n]) for n in sorted(recorded.found))


def points(args: DownloadDiesArgs, length: int) -> list[int]:
    """Bytes sent before the close: `at`, or K spread over the payload and its ends
    (nothing, and all but the last byte)."""
    if args.at is not None:
        past = [n for n in args.at if n >= length]
        if past:
            raise StepFailed(f"download_dies: {past[0]} is not before the payload's end: it has "
                             f"{length} bytes (points go from 0 to {length - 1})")  # fmt: skip
        return sorted(set(args.at))
    assert args.sweep is not None
    spread = {round(j * length / (args.sweep + 1)) for j in range(1, args.sweep + 1)}
    return sorted(spread | {0, length - 1})


def _download(run: Run, args: DownloadDiesArgs, sent: int) -> str:
    """The download step with the connection closing after `sent` bytes; what the
    library made of it, in a line."""
    served = (args.ota.served or HttpFault()).model_copy(update={"close_after": sent})
    step = args.ota.model_copy(update={"served": served})
    try:
        report = handlers()[step.KIND](run, step)
    except DeviceError as exc:
        return f"the library raised {exc.traceback.splitlines()[-1]}"
    except HarnessError as exc:
        return str(exc).splitlines()[0]
    booted = getattr(report, "booted", None)
    return f"the library rebooted; {booted} runs" if booted else "the library returned"


def _point(sent: int, length: int, said: str) -> FaultPoint:
    return FaultPoint(sent, f"{sent}/{length}", f"the connection closed after {sent} of "
                      f"{length} bytes", said, rerun=f"rerun just that point with `at: "
                      f"[{sent}]`")  # fmt: skip
