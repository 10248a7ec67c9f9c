"""Boot to the >>> prompt on a 16MB image: bare QEMU vs `harness boot --exec`, one run.

Both contenders are whole commands timed from outside, on the same flash image and the
same QEMU binary, alternating so that machine noise hits both alike:

- bare: a minimal script (python + pexpect) that runs QEMU on a copy of the image with
  the serial port on stdio and waits for `>>> `;
- harness: `harness boot IMAGE --exec "print(1)"`, which also starts paused, attaches,
  resumes, waits for the prompt, runs the code in raw-paste mode and reaps QEMU.

Prints a table and a final `key=value` line.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import images
from harness.qemu import find_qemu

BARE = """
import sys, pexpect
q = pexpect.spawn(sys.argv[1], ["-nographic", "-machine", "esp32", "-drive",
                  "file=" + sys.argv[2] + ",if=mtd,format=raw"], timeout=60)
q.expect(b">>> ")
q.terminate(force=True)
"""


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firmware-dir", type=Path, default=Path("../shared/firmware"))
    ap.add_argument("--firmware", default="ESP32_GENERIC-OTA-20250415-v1.25.0.bin")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--qemu")
    args = ap.parse_args()
    qemu = find_qemu(args.qemu)
    firmware = args.firmware_dir / args.firmware
    image = images.build(images.Recipe(firmware, 16 * images.MB))
    harness = [sys.executable, "-m", "harness", "boot", str(image), "--exec", "print(1)",
               "--qemu", str(qemu)]  # fmt: skip
    results: dict[str, list[float]] = {"bare QEMU": [], "harness boot --exec": []}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "flash.bin"
        for _ in range(args.runs):
            shutil.copyfile(image, copy)  # bare QEMU writes into its flash too
            results["bare QEMU"].append(timed([sys.executable, "-c", BARE, str(qemu), str(copy)]))
            results["harness boot --exec"].append(timed(harness))
    print(f"boot to >>> on a 16MB image ({firmware.name}), {args.runs} runs each, {qemu}")
    print(f"{'contender':<24}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, values in results.items():
        print(f"{name:<24}{statistics.median(values):>10.3f}{min(values):>8.3f}{max(values):>8.3f}")
    bare = statistics.median(results["bare QEMU"])
    ours = statistics.median(results["harness boot --exec"])
    print(f"bare_s={bare:.3f} harness_s={ours:.3f} overhead={ours / bare - 1:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
