"""Boot loops with the emulated timer-group watchdogs on and off, idle and under load.

The guest's clock follows the host's, so a host that starves QEMU fires the guest's
timer-group watchdogs (TG0WDT/TG1WDT) and the board boot-loops although the firmware
is fine. This bench boots the two most sensitive builds (v1.20.0, and v1.21.0 SPIRAM
with PSRAM) N times in each condition, with the watchdogs on and off:

- 1 worker: one boot at a time on a quiet machine;
- 2 workers: two boots at once (what pytest -n 2 does on 2 cores);
- hog: one boot at a time with a busy loop on every core.

Each boot either reaches `>>>` or is reported as a boot loop (or another failure);
prints a table of counts and a final key=value line. Nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import chips
from harness.emulator import device, policy
from harness.emulator.device import BootOptions
from harness.errors import BootLoop, HarnessError
from harness.flash import images
from harness.flash.size import FlashSize
from harness.sources import manifest

FIRMWARE = ["ESP32_GENERIC@v1.20.0", "ESP32_GENERIC-SPIRAM@v1.21.0"]
TIMEOUT = 30.0  # a boot takes 2 s; one that has not reached >>> by then has stalled


def boot_once(image: Path, qemu: str | None, watchdogs: bool) -> str:
    try:
        # alone=False: measure the guest as it is, not the harness's remedy for it
        with device.boot(
            image, BootOptions(policy.for_image(image, watchdogs=watchdogs, alone=False), qemu=qemu)
        ) as dev:
            dev.wait_prompt(TIMEOUT)
        return "booted"
    except BootLoop as loop:
        fired = sorted({r for r in loop.reasons if chips.ESP32.is_watchdog(r)})
        return "boot loop (" + ",".join(fired) + ")"
    except HarnessError as exc:
        return f"failed: {type(exc).__name__}"


def condition(name: str, image: Path, qemu: str | None, watchdogs: bool, runs: int) -> Counter[str]:
    workers = 2 if name == "2 workers" else 1
    hogs = []
    if name == "hog":
        code = "while True: pass"
        hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 2)]
        time.sleep(2)
    try:
        with ThreadPoolExecutor(workers) as pool:
            outcomes = pool.map(lambda _: boot_once(image, qemu, watchdogs), range(runs))
            return Counter(outcomes)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="boots per firmware and condition")
    ap.add_argument("--firmware", action="append", help="manifest entries (default: the two "
                    "most sensitive builds, v1.20.0 and v1.21.0 SPIRAM)")  # fmt: skip
    ap.add_argument("--qemu")
    args = ap.parse_args()
    chooser = manifest.selector()
    print(
        f"watchdogs on/off, {args.runs} boots each, {os.cpu_count()} cores, {time.strftime('%F')}"
    )
    print(f"  {'firmware':<30}{'condition':<11}{'watchdogs':<11}outcomes")
    loops = {True: 0, False: 0}
    total = {True: 0, False: 0}
    for entry in args.firmware or FIRMWARE:
        image = images.build(images.Recipe(chooser.entry(entry).path, FlashSize(4)))
        for name in ("1 worker", "2 workers", "hog"):
            for watchdogs in (True, False):
                counts = condition(name, image, args.qemu, watchdogs, args.runs)
                bad = sum(n for outcome, n in counts.items() if outcome != "booted")
                loops[watchdogs] += bad
                total[watchdogs] += args.runs
                text = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
                word = "on" if watchdogs else "off"
                print(f"  {entry:<30}{name:<11}{word:<11}{text}", flush=True)
    print(
        f"boots_per_setting={total[True]} not_booted_watchdogs_on={loops[True]} "
        f"not_booted_watchdogs_off={loops[False]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
