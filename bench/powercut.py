"""A 20-point power-cut sweep against one uninterrupted run of the same update, side by side.

The flow: at 16MB, the device writes the app into ota_1 (method harness), set_boot(),
reboot. Uninterrupted, that is one `ota` step; swept, it is a `power_cut` over the same
step with `sweep: 20` (plus its boundaries), each point a power-on from the flash as the
cut left it. The target (issue: power loss) is a sweep within 3x one run. Both run with
`harness run` in this process's environment (HARNESS_FIRMWARE_DIR, QEMU as the harness
finds it), one after the other, retries off. Prints a table and a key=value line.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.scenario.results import iter_cells

HEAD = """title: bench
source: bench/powercut.py
requires: [ota]
matrix: {{flash_size: [{size}], firmware: [{firmware}]}}
steps:
  - boot: prompt
"""
ONE_RUN = "  - ota: {payload: app, method: harness}\n  - assert_booted: ota_1\n"
SWEEP = (
    "  - power_cut:\n      ota: {{payload: app, method: harness}}\n      sweep: {points}\n"
    "  - boot: prompt\n  - assert_booted: [ota_0, ota_1]\n"
)


def run(scenario: Path, artifacts: Path) -> tuple[float, str]:
    harness = str(Path(sys.executable).parent / "harness")
    start = time.monotonic()
    done = subprocess.run([harness, "run", str(scenario), "--artifacts", str(artifacts),
                           "--retries", "0"], capture_output=True, text=True)  # fmt: skip
    seconds = time.monotonic() - start
    last = (done.stdout.strip().splitlines() or ["?"])[-1]
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"{scenario.name} failed: {last}")
    return seconds, done.stdout


def _step_seconds(artifacts: Path, kind: str) -> list[float]:
    """How long each `kind` step took in the one cell under `artifacts` (its timeline)."""
    (cell,) = iter_cells(artifacts)
    return [s.elapsed_s for s in cell.timeline if s.step == kind]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="16MB")
    parser.add_argument("--firmware", default="ESP32_GENERIC-OTA@v1.25.0")
    parser.add_argument("--points", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-powercut-") as tmp:
        folder = Path(tmp)
        head = HEAD.format(size=args.size, firmware=args.firmware)
        one = folder / "one-run.yaml"
        one.write_text(head + ONE_RUN)
        swept = folder / "sweep.yaml"
        swept.write_text(head + SWEEP.format(points=args.points))
        one_s, _ = run(one, folder / "a")
        sweep_s, out = run(swept, folder / "b")
        ota_s = _step_seconds(folder / "a", "ota")[0]
        recorded_s = _step_seconds(folder / "b", "power_cut")[0]
        power_ons = sorted(_step_seconds(folder / "b", "boot")[1:])  # the first is before
    cuts = sum(1 for line in out.splitlines() if re.match(r"\s+\d+/\d+\s", line))
    ratio = sweep_s / one_s
    per_point = statistics.median(power_ons)
    print(f"{'run':<48} {'wall s':>8}")
    print(f"{'one uninterrupted update (harness run)':<48} {one_s:8.1f}")
    print(f"{'  its ota step':<48} {ota_s:8.1f}")
    print(f"{f'sweep of {cuts} cut points (harness run)':<48} {sweep_s:8.1f}")
    print(f"{'  the same update, its flash operations recorded':<48} {recorded_s:8.1f}")
    print(f"{'  a power-on after a cut (median)':<48} {per_point:8.2f}")
    print(f"ratio {ratio:.2f} (target: at most 3)")
    print(f"one_run_s={one_s:.1f} sweep_s={sweep_s:.1f} points={cuts} ratio={ratio:.2f} "
          f"ota_step_s={ota_s:.1f} recorded_step_s={recorded_s:.1f} "
          f"power_on_s={per_point:.2f}")  # fmt: skip
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
