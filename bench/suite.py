"""The scenario library's wall time with 1 and 2 pytest-xdist workers, and image building.

First every cell's image and payloads are built into an empty cache (cold) and once more
(warm: all cache hits). Then `pytest scenarios -n N --retries 0` runs with N = 1 and 2,
each with its own JUnit XML. Prints a table, the cells whose outcome (pass/fail/skip and
booted partition) differs between the two runs, and a final key=value line. Retries are
off: a retried cell would hide a changed result.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def outcomes(junit: Path) -> dict[str, str]:
    """test id -> 'passed booted=ota_0' (or failed/skipped with the first message line)."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if case.find("failure") is not None or case.find("error") is not None:
            status = "failed"
        elif case.find("skipped") is not None:
            status = "skipped"
        else:
            status = "passed"
        result[case.get("name", "?")] = f"{status} booted={props.get('booted')}"
        why = case.find("failure") if case.find("failure") is not None else case.find("error")
        if why is not None:
            print(f"    {junit.stem}: {case.get('name')}: {(why.get('message') or '')[:300]}")
    return result


def build_all(cache: Path) -> float:
    """Build every cell's image and payloads into `cache`; return the seconds it took."""
    from harness import images, runner, scenario

    start = time.monotonic()
    firmware_dir = scenario.default_firmware_dir()
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        for cell in scenario.load(path).cells(firmware_dir):
            if cell.skip_reason() is None:
                recipe = runner.recipe_for(cell)
                images.build(recipe, cache)
                for kind in scenario.PAYLOAD_KINDS:
                    runner.payload_path(cell, recipe, kind, cache)
    return time.monotonic() - start


def run(workers: int, folder: Path, extra: list[str]) -> tuple[float, dict[str, str]]:
    junit = folder / f"junit-{workers}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "scenarios",
           "-n", str(workers), "--retries", "0", "--junitxml", str(junit),
           "--artifacts", str(folder / f"artifacts-{workers}"), *extra]  # fmt: skip
    start = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, check=False)
    return time.monotonic() - start, outcomes(junit)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qemu")
    ap.add_argument("-m", dest="marker", help="only cells with this marker (4mb, 16mb)")
    args = ap.parse_args()
    extra = [*(["--qemu", args.qemu] if args.qemu else []),
             *(["-m", args.marker] if args.marker else [])]  # fmt: skip
    print(f"scenario library, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["HARNESS_CACHE"] = str(folder / "cache")  # the pytest runs use it too
        cold = build_all(folder / "cache")
        warm = build_all(folder / "cache")
        print(f"  image build, cold  {cold:8.1f} s   warm {warm:6.2f} s", flush=True)
        one_s, one = run(1, folder, extra)
        print(f"  1 worker   {one_s:8.1f} s  ({len(one)} cells)", flush=True)
        two_s, two = run(2, folder, extra)
        print(f"  2 workers  {two_s:8.1f} s  ({len(two)} cells)", flush=True)
    changed = sorted(k for k in one.keys() | two.keys() if one.get(k) != two.get(k))
    for name in changed:
        print(f"  changed: {name}: 1 worker {one.get(name)} / 2 workers {two.get(name)}")
    for runs, results in (("1 worker", one), ("2 workers", two)):
        for name, outcome in sorted(results.items()):
            if outcome.startswith("failed"):
                print(f"  failed with {runs}: {name}: {outcome}")
    failed = sum(v.startswith("failed") for v in [*one.values(), *two.values()])
    print(
        f"build_cold_s={cold:.1f} build_warm_s={warm:.2f} "
        f"suite_1_worker_s={one_s:.1f} suite_2_workers_s={two_s:.1f} "
        f"speedup={one_s / two_s:.2f} cells={len(one)} changed={len(changed)} failed={failed}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
