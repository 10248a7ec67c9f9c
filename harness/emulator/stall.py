"""Is a guest that stopped answering stuck, or only slow? Asked of QEMU, in one place.

Every console wait that times out asks this before it raises (harness.emulator.console),
so a guest that stopped is named `GuestStalled` (the emulator's failure, which the retry
policy may rerun) and a guest that runs but never printed what was awaited stays a
`DeviceTimeout` (a real failure, never rerun). The answer comes from QEMU's view of the
CPUs, sampled a few times, not from what the firmware printed or which build it is.

The guest is stalled when QEMU's machine is not running (stopped over QMP, or halted on
an internal error), or when every CPU is stuck. A CPU is stuck when the QEMU thread that
runs it had the host's CPU for at least a quarter of the looks' span (a spinning CPU burns
its thread's time; on a starved host a thread that was merely not scheduled shows its CPU
at one PC too, and so does an idle CPU halted in `waiti`, whose thread sleeps) and yet it
stayed at one PC with interrupts masked (PS.INTLEVEL 3 and up, so not even the tick moves
it on) in every look, or inside a high-level interrupt handler (level 4-5) in every look.
Such handlers last microseconds on a healthy ESP32; ESP-IDF 4.x's DPORT stall, the old
builds' deadlock in QEMU 8.0, holds one CPU in one and the other masked at one PC
(docs/known-behaviour.md). One CPU alone stuck is not enough: after `machine.reset()` the
APP CPU spins in the ROM at one PC with interrupts masked, as on silicon, while the PRO
CPU boots. An idle guest that never prints what was awaited is the firmware's answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .qemu import CpuState

SAMPLES = 5  # looks at the CPUs, each GAP apart: about 1 s, paid only by a wait that failed
GAP = 0.25
RAN_AT_LEAST = 0.25  # of the looks' span, on the CPU's host thread, to count as spinning
MASKED = 3  # PS.INTLEVEL from which FreeRTOS's tick cannot interrupt (XCHAL_EXCM_LEVEL)
HIGH_LEVEL = 4  # PS.INTLEVEL of ESP32's high-level interrupt handlers (4, 5; 6 is NMI)


class Watched(Protocol):
    """What a diagnosis asks of a board (harness.emulator.board.Board has both)."""

    def cpu_states(self) -> list[CpuState]: ...

    def vm_status(self) -> str | None: ...


@dataclass(frozen=True)
class Diagnosis:
    """What QEMU said of the CPUs when a wait ran out."""

    stalled: bool  # every CPU stuck: the emulator's failure, not the firmware's
    words: str  # one clause for the error message

    @staticmethod
    def of(status: str | None, samples: Sequence[Sequence[CpuState]], span: float) -> Diagnosis:
        """The verdict on QEMU's run state and `samples` (each one look at every CPU),
        taken over `span` seconds."""
        if status is not None and status != "running":
            return Diagnosis(True, f"QEMU's machine is not running (status {status!r})")
        if not samples or any(not s or len(s) != len(samples[0]) for s in samples):
            return Diagnosis(False, "QEMU did not say where its CPUs are")
        last = samples[-1]
        why = [_stuck([s[i] for s in samples], span) for i in range(len(last))]
        where = "; ".join(f"{cpu} ({w or 'running'})" for cpu, w in zip(last, why, strict=True))
        if all(why):
            return Diagnosis(True, f"the emulated CPUs are stuck: {where}")
        return Diagnosis(False, f"the emulated CPUs are running: {where}")


def _stuck(history: list[CpuState], span: float) -> str:
    """Why one CPU counts as stuck over its samples ('' when it does not)."""
    first, last = history[0].host_time, history[-1].host_time
    if first is not None and last is not None and last - first < RAN_AT_LEAST * span:
        return ""  # its thread hardly ran: not scheduled, or halted in waiti
    if all(c.intlevel >= HIGH_LEVEL for c in history):
        return "in a high-level interrupt handler in every look: a cross-CPU deadlock"
    if len({(c.pc, c.intlevel) for c in history}) == 1 and history[0].intlevel >= MASKED:
        return "at one PC with interrupts masked in every look"
    return ""


def diagnose(board: Watched, samples: int = SAMPLES) -> Diagnosis:
    """Look at QEMU's run state and the CPUs `samples` times, GAP apart, and judge."""
    status = board.vm_status()
    start = time.monotonic()
    seen = []
    for n in range(samples):
        if n:
            time.sleep(GAP)
        seen.append(board.cpu_states())
    return Diagnosis.of(status, seen, time.monotonic() - start)
