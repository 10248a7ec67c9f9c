"""Every flash state of an update against one uninterrupted run of it, side by side.

The flow (the starting report's, at 16MB): the device writes the app into ota_1 (method
harness), set_boot(), reboot. Uninterrupted, that is one `ota` step. Covered, it is a
`power_cut` over the same step with `sweep: all` (every distinct flash state, booted or
in the class of a booted state that read the same bytes), then again with `torn: true`
and `depth: 2` (the state inside each operation, and every state of what each power-on
wrote). Targets (issue 32): all states within 3x one run; torn and depth 2 within 10x.
All run with `harness run` in this process's environment (HARNESS_FIRMWARE_DIR, QEMU as
the harness finds it), one after the other, retries off. Prints a table and key=value
lines; `--sweep N` adds the old sampled sweep for comparison.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.scenario.powercut import Recorded
from harness.scenario.results import iter_cells

HEAD = """title: bench
source: bench/powercut.py
requires: [ota]
matrix: {{flash_size: [{size}], firmware: [{firmware}]}}
steps:
  - boot: prompt
"""
ONE_RUN = "  - ota: {payload: app, method: harness}\n  - assert_booted: ota_1\n"
CUT = (
    "  - power_cut:\n      ota: {{payload: app, method: harness}}\n      {how}\n"
    "  - boot: prompt\n  - assert_booted: [ota_0, ota_1]\n"
)
RUNS = {
    "every state (sweep: all)": "sweep: all",
    "every state, torn, depth 2": "sweep: all\n      torn: true\n      depth: 2",
}


def run(scenario: Path, artifacts: Path) -> tuple[float, Recorded | None]:
    harness = str(Path(sys.executable).parent / "harness")
    start = time.monotonic()
    done = subprocess.run([harness, "run", str(scenario), "--artifacts", str(artifacts),
                           "--retries", "0"], capture_output=True, text=True)  # fmt: skip
    seconds = time.monotonic() - start
    last = (done.stdout.strip().splitlines() or ["?"])[-1]
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"{scenario.name} failed: {last}")
    (cell,) = iter_cells(artifacts)
    return seconds, cell.detail("power_cut", Recorded)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="16MB")
    parser.add_argument("--firmware", default="ESP32_GENERIC-OTA@v1.25.0")
    parser.add_argument("--sweep", type=int, default=0, help="also a sampled sweep: K")
    args = parser.parse_args()
    runs = dict(RUNS)
    if args.sweep:
        runs[f"sampled (sweep: {args.sweep})"] = f"sweep: {args.sweep}"
    head = HEAD.format(size=args.size, firmware=args.firmware)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-powercut-") as tmp:
        folder = Path(tmp)
        one = folder / "one-run.yaml"
        one.write_text(head + ONE_RUN)
        one_s, _ = run(one, folder / "one")
        for j, (name, how) in enumerate(runs.items()):
            path = folder / f"cut-{j}.yaml"
            path.write_text(head + CUT.format(how=how))
            seconds, recorded = run(path, folder / f"cut-{j}")
            assert recorded is not None
            rows.append((name, seconds, recorded))
    print(f"{'run':<30} {'wall s':>7} {'ratio':>6} {'ops':>7} {'distinct':>8} {'torn':>6} "
          f"{'2nd-cut':>7} {'power-ons':>9} {'states/power-on':>15}")  # fmt: skip
    print(f"{'one uninterrupted update':<30} {one_s:7.1f} {1:6.2f}")
    for name, seconds, r in rows:
        states = r.distinct + r.torn + r.second
        booted = len(r.points)
        print(f"{name:<30} {seconds:7.1f} {seconds / one_s:6.2f} {r.of:7,} {r.distinct:8,} "
              f"{r.torn:6,} {r.second:7,} {booted:9,} {states / booted:15,.0f}")  # fmt: skip
    for name, seconds, r in rows:
        print(f"\n{name}: {r.coverage}")
        print(f"key={name.split(' (')[0].replace(' ', '_').replace(',', '')} one_run_s={one_s:.1f} "
              f"run_s={seconds:.1f} ratio={seconds / one_s:.2f} ops={r.of} distinct={r.distinct} "
              f"torn={r.torn} second={r.second} second_ops={r.second_ops} "
              f"classes={len(r.classes)} power_ons={len(r.points)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
