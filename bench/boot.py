"""Boot to the >>> prompt on a 16MB image: bare QEMU, the harness, pytest-embedded, one run.

Every contender is a whole command timed from outside, on the same flash image and the
same QEMU binary, in turns so that machine noise hits all alike:

- bare: a minimal script (python + pexpect) that runs QEMU on a copy of the image with
  the serial port on stdio and waits for `>>> `;
- harness: `harness boot IMAGE --exec "print(1)"`, which also starts paused, attaches,
  resumes, waits for the prompt, runs the code in raw-paste mode and reaps QEMU;
- harness under pytest: a one-step scenario (`boot: prompt`) collected by the plugin;
- pytest-embedded: `pytest --embedded-services qemu --qemu-image-path IMAGE` with a test
  that expects `>>> ` (pytest-embedded and pytest-embedded-qemu from PyPI, installed in
  their own virtual environment `.venv-peers`, so the two plugins never meet).

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

from harness.emulator.qemu import find_qemu
from harness.flash import images
from harness.flash.size import FlashSize
from harness.sources import manifest

BARE = """
import sys, pexpect
q = pexpect.spawn(sys.argv[1], ["-nographic", "-machine", "esp32", "-drive",
                  "file=" + sys.argv[2] + ",if=mtd,format=raw"], timeout=60)
q.expect(b">>> ")
q.terminate(force=True)
"""


PEER_TEST = """
def test_prompt(dut):
    dut.expect(">>> ", timeout=60)
"""
SCENARIO = """
title: boot only
source: bench/boot.py
matrix: {{flash_size: [16MB], firmware: ["{firmware}"]}}
steps: [{{boot: prompt}}]
"""
ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / ".venv-peers"


def timed(cmd: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
    if run.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{run.stdout.decode()[-2000:]}")
    return time.perf_counter() - start


def peers() -> Path:
    """pytest-embedded in its own venv (created on first use)."""
    if not (PEERS / "bin" / "pytest").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        subprocess.run([str(PEERS / "bin" / "pip"), "install", "-q", "pytest-embedded",
                        "pytest-embedded-qemu"], check=True)  # fmt: skip
    return PEERS / "bin" / "pytest"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firmware", default="ESP32_GENERIC-OTA@v1.25.0", help="manifest entry")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--qemu")
    args = ap.parse_args()
    qemu = find_qemu(args.qemu)
    firmware = manifest.selector().entry(args.firmware).path
    image = images.build(images.Recipe(firmware, FlashSize(16)))
    harness = [sys.executable, "-m", "harness", "boot", str(image), "--exec", "print(1)",
               "--qemu", str(qemu)]  # fmt: skip
    peer = peers()
    results: dict[str, list[float]] = {
        "bare QEMU": [], "harness boot --exec": [], "harness (pytest)": [], "pytest-embedded": [],
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        copy = folder / "flash.bin"
        (folder / "test_peer.py").write_text(PEER_TEST)
        (folder / "boot.yaml").write_text(SCENARIO.format(firmware=firmware.resolve()))
        ours_pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       str(folder / "boot.yaml"), "--qemu", str(qemu),
                       "--artifacts", str(folder / "art")]  # fmt: skip
        theirs = [str(peer), "-q", "-p", "no:cacheprovider", str(folder / "test_peer.py"),
                  "--embedded-services", "qemu", "--qemu-image-path", str(copy),
                  "--qemu-prog-path", str(qemu), "--skip-regenerate-image", "y"]  # fmt: skip
        for _ in range(args.runs):
            shutil.copyfile(image, copy)  # bare QEMU writes into its flash too
            results["bare QEMU"].append(timed([sys.executable, "-c", BARE, str(qemu), str(copy)]))
            results["harness boot --exec"].append(timed(harness))
            results["harness (pytest)"].append(timed(ours_pytest, cwd=folder))
            shutil.copyfile(image, copy)
            results["pytest-embedded"].append(timed(theirs, cwd=folder))
    print(f"boot to >>> on a 16MB image ({firmware.name}), {args.runs} runs each, {qemu}")
    print(f"{'contender':<24}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, values in results.items():
        print(f"{name:<24}{statistics.median(values):>10.3f}{min(values):>8.3f}{max(values):>8.3f}")
    bare = statistics.median(results["bare QEMU"])
    ours = statistics.median(results["harness boot --exec"])
    ours_pytest = statistics.median(results["harness (pytest)"])
    theirs = statistics.median(results["pytest-embedded"])
    print(
        f"bare_s={bare:.3f} harness_s={ours:.3f} harness_pytest_s={ours_pytest:.3f} "
        f"pytest_embedded_s={theirs:.3f} overhead={ours / bare - 1:.3f} "
        f"pytest_vs_embedded={ours_pytest / theirs:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
