"""Are the old builds' emulation stalls all named? Boots each build N times through the
waits `make test` uses (tests/test_boot.py: the boot to `>>>`, then REPL exec; for the
SPIRAM build without PSRAM, its two PSRAM errors first) and counts how each boot ended:
at the prompt, `GuestStalled` (named: the retry policy reruns it), `DeviceTimeout`
(unnamed: a stall the diagnosis missed, which a clean-clone CI would fail on), or another
error. The goal is 0 unnamed. Retries are off: every boot counts once.

    python bench/stalls.py --repeat 30 [--firmware-dir DIR]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.emulator import device, policy
from harness.emulator.device import BootOptions
from harness.errors import DeviceTimeout, GuestStalled, HarnessError
from harness.flash import images
from harness.flash.size import FlashSize
from harness.sources import manifest

PSRAM_ERRORS = [
    "quad_psram: PSRAM ID read error: 0x00000000, PSRAM chip not found or not supported",
    "esp_psram: PSRAM enabled but initialization failed. Bailing out.",
]


@dataclass(frozen=True)
class Case:
    label: str
    entry: str  # manifest id
    psram: bool | None  # None: as the policy decides


CASES = [
    Case("v1.20.0", "ESP32_GENERIC@v1.20.0", None),
    Case("v1.21.0 SPIRAM", "ESP32_GENERIC-SPIRAM@v1.21.0", None),
    Case("v1.21.0 SPIRAM, no PSRAM", "ESP32_GENERIC-SPIRAM@v1.21.0", False),
]


def boot_once(image: Path, case: Case, qemu: str | None) -> tuple[str, str]:
    """One boot through make test's waits: ('ok'|error class name, its first line)."""
    options = BootOptions(policy.for_image(image, psram=case.psram), qemu=qemu)
    try:
        with device.boot(image, options) as dev:
            if case.psram is False:
                for line in PSRAM_ERRORS:
                    dev.console.expect(re.escape(line), 30, during="PSRAM init")
            dev.wait_prompt(30)
            if dev.repl.exec("print(6 * 7)").strip() != "42":
                return "wrong answer", ""
    except (GuestStalled, DeviceTimeout, HarnessError) as exc:
        return type(exc).__name__, str(exc).splitlines()[0]
    return "ok", ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--firmware-dir", type=Path)
    parser.add_argument("--qemu")
    args = parser.parse_args()
    selector = manifest.selector(args.firmware_dir)
    unnamed = 0
    rows = []
    for case in CASES:
        firmware = selector.entry(case.entry).path
        image = images.build(images.Recipe(firmware, FlashSize.emulated("4MB")))
        ends: collections.Counter[str] = collections.Counter()
        start = time.monotonic()
        for n in range(args.repeat):
            end, words = boot_once(image, case, args.qemu)
            ends[end] += 1
            if end != "ok":
                print(f"  {case.label} boot {n + 1}: {end}: {words}", flush=True)
        wall = time.monotonic() - start
        unnamed += ends["DeviceTimeout"]
        rows.append((case.label, ends, wall))
        print(f"{case.label}: {dict(ends)} in {wall:.0f}s", flush=True)
    print("\n| build | boots | at the prompt | GuestStalled (named) | DeviceTimeout (unnamed) "
          "| other | wall |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for label, ends, wall in rows:
        other = sum(ends.values()) - ends["ok"] - ends["GuestStalled"] - ends["DeviceTimeout"]
        print(f"| {label} | {sum(ends.values())} | {ends['ok']} | {ends['GuestStalled']} | "
              f"{ends['DeviceTimeout']} | {other} | {wall:.0f} s |")  # fmt: skip
    print(f"unnamed={unnamed}")
    return 1 if unnamed else 0


if __name__ == "__main__":
    sys.exit(main())
