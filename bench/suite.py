"""The scenario library's wall time and the sum of its cells, side by side in one run.

Runs `pytest scenarios --flash-size SIZE` (16MB by default, what `make test-16mb` runs)
in these configurations, each with its own JUnit XML and retries off (a retry would
hide a changed outcome):

- staged writes, 1 worker, watchdogs off (the default: the baseline);
- staged writes, 2 workers, watchdogs off (repeated `--repeat` times);
- device-side writes (every `method: staged` turned into `method: harness`), 1 worker;
- staged writes, 2 workers, watchdogs on.

Image building (cold, then warm) is timed first. Prints a table, every cell whose
outcome (status and booted partition) differs from the baseline, and a key=value line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    name: str
    wall_s: float
    cells_s: float  # the sum of the cells' own times
    outcomes: dict[str, str]


def outcomes(junit: Path) -> tuple[dict[str, str], float]:
    """test id -> 'passed booted=ota_0' (or failed/skipped), and the sum of cell times."""
    result, total = {}, 0.0
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped") is not None
        status = "failed" if bad is not None else "skipped" if skipped else "passed"
        result[case.get("name", "?")] = f"{status} booted={props.get('booted')}"
        total += float(case.get("time", 0))
        if bad is not None:
            print(f"    {junit.stem}: {case.get('name')}: {(bad.get('message') or '')[:300]}")
    return result, total


def build_all(cache: Path, size: str) -> float:
    """Build every cell's image and payloads into `cache`; return the seconds it took."""
    from harness.flash import images
    from harness.flash.size import FlashSize
    from harness.scenario import format, plan, runner
    from harness.sources import manifest

    start = time.monotonic()
    options = plan.RunOptions(flash_sizes=(FlashSize.emulated(size),))
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        for cell in plan.cells(format.load(path), manifest.selector(), options):
            if isinstance(cell, plan.CellPlan):
                runner.build(cell, cache)
                for kind in images.PAYLOAD_KINDS:
                    runner.payload_path(cell, kind, cache)
    return time.monotonic() - start


def device_side_copy(folder: Path) -> Path:
    """The library with every staged write done by the device instead."""
    target = folder / "device-side" / "scenarios"
    shutil.copytree(ROOT / "scenarios", target)
    for path in target.glob("*.yaml"):
        path.write_text(path.read_text().replace("method: staged", "method: harness"))
    return target


def run(name: str, scenarios: Path, folder: Path, workers: int, extra: list[str]) -> Run:
    tag = name.replace(" ", "-").replace(",", "")
    junit = folder / f"junit-{tag}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(scenarios),
           "-n", str(workers), "--retries", "0", "--junitxml", str(junit),
           "--artifacts", str(folder / f"artifacts-{tag}"), *extra]  # fmt: skip
    start = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, check=False)
    wall = time.monotonic() - start
    found, cells = outcomes(junit)
    print(f"  {name:<34}{wall:>9.1f} s{cells:>10.1f} s  ({len(found)} cells)", flush=True)
    return Run(name, wall, cells, found)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qemu")
    ap.add_argument("--flash-size", default="16MB")
    ap.add_argument("--repeat", type=int, default=1, help="runs of the 2-worker configuration")
    args = ap.parse_args()
    extra = ["--flash-size", args.flash_size, *(["--qemu", args.qemu] if args.qemu else [])]
    print(f"scenario library at {args.flash_size}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}, {time.strftime('%F')}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["HARNESS_CACHE"] = str(folder / "cache")  # the pytest runs use it too
        cold = build_all(folder / "cache", args.flash_size)
        warm = build_all(folder / "cache", args.flash_size)
        print(f"  image build, cold {cold:.1f} s, warm {warm:.2f} s")
        print(f"  {'configuration':<34}{'wall':>11}{'cells sum':>12}")
        scenarios = ROOT / "scenarios"
        base = run("staged, 1 worker, watchdogs off", scenarios, folder, 1,
                   [*extra, "--watchdogs", "off"])  # fmt: skip
        twos = [run(f"staged, 2 workers, watchdogs off #{i + 1}", scenarios, folder, 2,
                    [*extra, "--watchdogs", "off"]) for i in range(args.repeat)]  # fmt: skip
        device = run("device-side, 1 worker, watchdogs off", device_side_copy(folder), folder,
                     1, [*extra, "--watchdogs", "off"])  # fmt: skip
        wdt = run("staged, 2 workers, watchdogs on", scenarios, folder, 2,
                  [*extra, "--watchdogs", "on"])  # fmt: skip
    changed = 0
    for other in [*twos, device, wdt]:
        for cell in sorted(base.outcomes.keys() | other.outcomes.keys()):
            if base.outcomes.get(cell) != other.outcomes.get(cell):
                changed += 1
                print(f"  changed in '{other.name}': {cell}: {base.outcomes.get(cell)} -> "
                      f"{other.outcomes.get(cell)}")  # fmt: skip
    two = min(twos, key=lambda r: r.wall_s)
    same_twos = sum(r.outcomes == base.outcomes for r in twos)
    print(
        f"build_cold_s={cold:.1f} build_warm_s={warm:.2f} staged_1w_wall_s={base.wall_s:.1f} "
        f"staged_cells_sum_s={base.cells_s:.1f} staged_2w_wall_s={two.wall_s:.1f} "
        f"speedup_2w={base.wall_s / two.wall_s:.2f} device_side_cells_sum_s={device.cells_s:.1f} "
        f"staged_over_device={base.cells_s / device.cells_s:.2f} "
        f"watchdogs_on_2w_wall_s={wdt.wall_s:.1f} "
        f"two_worker_runs_identical={same_twos}/{len(twos)} "
        f"changed={changed}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
