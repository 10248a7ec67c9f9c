"""Peak memory during a 16MB OTA scenario: the harness process and its QEMU, one run.

Runs `harness run scenarios/ota-full-image-into-slot.yaml --flash-size 16MB` and samples
/proc every 50 ms: VmHWM (the kernel's peak resident set) of the harness process and of
every qemu-system-xtensa it starts. Prints a table and a final key=value line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.sources import manifest

ROOT = Path(__file__).resolve().parent.parent


def peak_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firmware", default="ESP32_GENERIC-OTA@v1.25.0", help="manifest entry")
    ap.add_argument("--qemu")
    args = ap.parse_args()
    firmware = manifest.selector().entry(args.firmware).path
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "harness", "run",
               str(ROOT / "scenarios" / "ota-full-image-into-slot.yaml"), "--flash-size", "16MB",
               "--firmware", str(firmware), "--artifacts", tmp,
               *(["--qemu", args.qemu] if args.qemu else [])]  # fmt: skip
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        harness_peak = qemu_peak = 0
        while proc.poll() is None:
            harness_peak = max(harness_peak, peak_kib(proc.pid) or 0)
            for child in children(proc.pid):
                if "qemu-system" in Path(f"/proc/{child}/comm").read_text(errors="ignore"):
                    qemu_peak = max(qemu_peak, peak_kib(child) or 0)
            time.sleep(0.05)
        output = proc.stdout.read() if proc.stdout else ""
        elapsed = time.monotonic() - start
    if proc.returncode != 0:
        print(output)
        return 1
    print(f"16MB OTA scenario ({firmware.name}), {elapsed:.1f} s, {os.cpu_count()} cores")
    print(f"  {'process':<28}{'peak RSS MiB':>14}")
    print(f"  {'harness (python)':<28}{harness_peak / 1024:>14.1f}")
    print(f"  {'qemu-system-xtensa':<28}{qemu_peak / 1024:>14.1f}")
    print(f"harness_peak_mib={harness_peak / 1024:.1f} qemu_peak_mib={qemu_peak / 1024:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
