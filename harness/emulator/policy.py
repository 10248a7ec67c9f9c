"""The one run policy: how an emulation runs unless told otherwise, decided in one place.

Every entry point (the CLI, the pytest plugin and its `board` fixture, the scenario
runner, `harness repro`, the library API, the benches and the tests) gets its
`RunPolicy` from `decide()`, so they all boot a given firmware the same way; the layers
below (`Machine`, `boot()`) have no defaults of their own for any of it.

- Watchdogs: off unless a scenario or an option turns them on. The guest's clock follows
  the host's, so a busy host fires the emulated timer-group watchdogs on firmware that is
  fine; Espressif's `idf.py qemu` turns them off too (bench/watchdog.py measured it).
- PSRAM: exactly when the firmware is a SPIRAM build (without it, it bails out of PSRAM
  and runs on its internal heap), except on the network (harness.emulator.launch: the
  Wi-Fi model and PSRAM do not mix).
- The host alone: when a step needs it (device-side writes, the user's own tools), or
  when the firmware is a build measured to stall on a shared host (ESP-IDF before v5.0.4).
- Retries: none unless asked; only errors that are the emulator's, never a firmware's
  result (`RETRYABLE`), for scenario cells (the runner), `harness run --retries` and the
  pytest plugin's tests that boot QEMU alike; builds that stall get at least
  `STALLING_BUILD_RETRIES` where retries are on, and none where they are off.
- The chip: the one the firmware's bootloader names, whose QEMU machine runs it
  (harness.chips); a chip the harness cannot boot is refused here, in one line.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..chips import DEFAULT, Chip
from ..errors import GuestStalled, ImageError, QemuCrashed, WatchdogBootLoop, WatchdogReset
from ..flash.firmware import FirmwareFacts

WATCHDOGS = False
# Builds measured to stall under host load in Espressif's QEMU (both CPUs parked at fixed
# PCs after the bootloader's `entry`, watchdogs on or off): ESP-IDF v4.2.4 (MicroPython
# v1.20.0) and v5.0.2 (v1.21.0 SPIRAM). Measured not to: v5.0.4, v5.2.2, v5.5.1.
STALLS_BEFORE = (5, 0, 4)
# They also deadlock on a quiet host, in about 1 boot of 4 (bench/stalls.py: 23-30% in 30
# boots each); a stalled attempt is named within about 10 s (harness.emulator.stall), so
# where retries are on at all such a build gets this many: all of 9 attempts stall about
# once in 50,000 at 30%, where 4 (3 retries) did once in 120, a red CI in a few runs.
STALLING_BUILD_RETRIES = 8
# What a retry may rerun: QEMU's own crash, watchdog resets (the guest's clock runs on while
# the host starves QEMU) and a guest QEMU shows stuck (harness.emulator.stall). A firmware's
# result, and a plain DeviceTimeout (the guest ran and never said it), never are.
RETRYABLE: tuple[type[Exception], ...] = (
    QemuCrashed, WatchdogBootLoop, WatchdogReset, GuestStalled,
)  # fmt: skip
OnOff = Literal["on", "off"]
Auto = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class RunPolicy:
    """How one emulation runs: what every boot of a cell, a test or a CLI command uses."""

    watchdogs: bool  # the emulated timer-group watchdogs run
    psram: bool  # the machine has 4 MB of PSRAM (-m 4M)
    alone: bool  # no other emulation shares the host meanwhile (harness.emulator.hostlock)
    retries: int = 0  # more attempts after an emulator failure (RETRYABLE)
    chip: Chip = DEFAULT  # whose QEMU machine runs it (harness.chips)
    network: bool = False  # Wi-Fi on QEMU's user networking (the chip's Wi-Fi QEMU runs it)


def stalls_under_load(idf_version: str | None) -> bool:
    """A build measured to stall when another emulation shares the host."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", idf_version or "")[:3])
    return bool(numbers) and numbers < STALLS_BEFORE


def retryable(error: BaseException | None) -> bool:
    """An error a retry may rerun: the emulator's, never the firmware's (`RETRYABLE`)."""
    return isinstance(error, RETRYABLE)


def retry_count(requested: int, *, stalls: bool) -> int:
    """Attempts after the first: as requested, at least STALLING_BUILD_RETRIES for a build
    that stalls, and none at all when none were requested (RETRIES=0 means none)."""
    if requested <= 0:
        return 0
    return max(requested, STALLING_BUILD_RETRIES) if stalls else requested


def on_off(word: OnOff | None) -> bool | None:
    """A user's on/off (a scenario key, an option); None: not said."""
    return None if word is None else word == "on"


def auto(word: Auto | None) -> bool | None:
    """A user's auto/on/off; None (auto): as the firmware needs."""
    return None if word in (None, "auto") else word == "on"


def decide(
    facts: FirmwareFacts,
    *,
    watchdogs: bool | None = None,
    psram: bool | None = None,
    alone: bool = False,
    retries: int = 0,
) -> RunPolicy:
    """The policy for one firmware; an argument left None is decided by the rules above
    (`network` is set by harness.emulator.launch, whose why_no_network says whether)."""
    if not facts.chip.boots:
        raise ImageError(f"{facts.name} is built for {facts.chip.name}: {facts.chip.why_not()}")
    stalls = stalls_under_load(facts.idf_version)
    return RunPolicy(
        watchdogs=WATCHDOGS if watchdogs is None else watchdogs,
        psram=facts.spiram if psram is None else psram,
        alone=alone or stalls,
        retries=retry_count(retries, stalls=stalls),
        chip=facts.chip,
    )


def with_update(decided: RunPolicy, update_idf: str | None, requested: int) -> RunPolicy:
    """A cell that also runs an update's app (a second release): when that build stalls,
    the cell takes the host alone and gets the retries its own cells would."""
    if not stalls_under_load(update_idf):
        return decided
    retries = max(decided.retries, retry_count(requested, stalls=True))
    return dataclasses.replace(decided, alone=True, retries=retries)


def for_image(
    image: Path, *, watchdogs: bool | None = None, psram: bool | None = None, alone: bool = False
) -> RunPolicy:
    """The policy for a firmware file or a whole flash image, read from the file itself."""
    return decide(FirmwareFacts.read(image), watchdogs=watchdogs, psram=psram, alone=alone)
