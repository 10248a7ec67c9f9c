"""Run the project's workflow files here with act, and check what they did.

    python tools/run_workflow.py nightly [--releases v1.25.0] [--sizes "4MB 16MB"]
                                         [--scenarios ...] [--extra tests/nightly/...]
    python tools/run_workflow.py ci [--job lint] [--job tests]

`make test-nightly` and `make test-ci-workflow` call it. The stand-ins (tools/act_local.py,
tests/containers.py) are printed as the run starts; the base image, Espressif's QEMU
release and the firmware (`../shared/firmware`, as HARNESS_FIRMWARE_MIRROR) are served on
loopback so the workflow's own download and sha256 steps run. The outcome, checked, goes
to artifacts/act/<workflow>/: act's JSON log, each job's artifacts, report.html and
run.json (jobs, wall times, checks). Exit 0: every check held and every job was green.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import yaml
from act_local import (
    ROOT,
    SHARED,
    Act,
    Job,
    SetupError,
    install_missing,
    need,
    podman_service,
    say,
    tool_cache,
)

sys.path.insert(0, str(ROOT / "tests"))
from containers import (
    Engine,
    base_image,
    qemu_release_tarball,
    served,
    sha256,
    with_host_pip,
)

from harness.emulator.qemu import find_qemu
from harness.errors import HarnessError
from harness.scenario import format as scenario_format
from harness.scenario.results import CellResult
from harness.sources import manifest

OUT = ROOT / "artifacts" / "act"
LIBRARY = ("/scenarios", "/scenarios/power-loss")


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str = ""


# -- the nightly -----------------------------------------------------------------------------


def nightly(args: argparse.Namespace) -> int:
    install_missing()
    need("chromium", "apt-get install chromium (report.html is opened in it)")
    out = fresh(OUT / "nightly")
    releases = "" if args.releases.strip() == "all" else args.releases
    entries = manifest.load_manifest().firmware
    expected_releases = [e.id for e in manifest.narrowed([e for e in entries if e.nightly],
                                                         releases)]  # fmt: skip
    sizes = args.sizes.split()
    say(f"matrix: {' '.join(sizes)} x {' '.join(expected_releases)}; scenarios: "
        f"{args.scenarios} {args.extra}".rstrip())  # fmt: skip
    with ExitStack() as stack:
        engine = stack.enter_context(podman_service(out))
        engine.images.add(workflow_image())
        build_args, base = docker_stand_ins(out, stack)
        mirror = stack.enter_context(served(SHARED / "firmware"))
        say(f"firmware mirror (HARNESS_FIRMWARE_MIRROR): {SHARED / 'firmware'} served at {mirror}")
        act = Act(ROOT / ".github/workflows/nightly.yml", out, (
            "--env", f"AGENT_TOOLSDIRECTORY={tool_cache(ROOT / 'build' / 'act')}",
            "--var", f"HARNESS_FIRMWARE_MIRROR={mirror}",
            "--var", f"HARNESS_DOCKER_BUILD_ARGS={build_args}",
            "--var", "NIGHTLY_MAX_PARALLEL=1",  # two cores: one emulating job at a time
            "--input", f"releases={releases}", "--input", f"sizes={args.sizes}",
            "--input", f"scenarios={args.scenarios}", "--input", f"extra_scenarios={args.extra}",
        ), env=engine.act_env(base))  # fmt: skip
        jobs = act.run()
    unpacked = unpack(act.artifacts, out)
    for bulky in (act.artifacts, out / "qemu-release"):  # the image (357 MB), the tarball
        shutil.rmtree(bulky, ignore_errors=True)
    checks = nightly_checks(jobs, unpacked, sizes, expected_releases, args)
    return verdict(jobs, checks, out, unpacked)


def workflow_image() -> str:
    """The image the nightly builds and runs (its `env: IMAGE`)."""
    flow = yaml.safe_load((ROOT / ".github/workflows/nightly.yml").read_text())
    return str(flow["env"]["IMAGE"])


def docker_stand_ins(out: Path, stack: ExitStack) -> tuple[str, str]:
    """The image job's extra `docker build` options (the stand-in base and QEMU release),
    and the base."""
    podman = Engine(shutil.which("podman") or "podman")
    try:
        base, what = base_image(podman, out)
        say(f"stand-in for the base image: {what}")
        base, what = with_host_pip(podman, base, out)
        say(f"  and for a build through the Docker API: {what}")
    except RuntimeError as exc:  # debootstrap, the import or the build failed: one line
        raise SetupError(f"no stand-in base image: {exc}") from None
    qemu = find_qemu(None)
    www = out / "qemu-release"
    www.mkdir()
    tarball = qemu_release_tarball(qemu)
    (www / "qemu.tar.xz").write_bytes(tarball)
    url = f"{stack.enter_context(served(www))}/qemu.tar.xz"
    say(f"stand-in for Espressif's QEMU release: {qemu} in the release's layout "
        f"({len(tarball)} bytes, sha256 {sha256(tarball)}) served at {url}")  # fmt: skip
    version = qemu.parent.parent.parent.name
    # The nightly's cells have no network; its source build is make test-docker's to check
    say("the Wi-Fi QEMU left out of the image (QEMU_WIFI=off): its git source is offline "
        "here, and make test-docker builds it from a stand-in")  # fmt: skip
    return (
        f"--network host --build-arg BASE={base} --build-arg QEMU_VERSION={version} "
        f"--build-arg QEMU_URL_AMD64={url} --build-arg QEMU_SHA256_AMD64={sha256(tarball)} "
        "--build-arg QEMU_WIFI=off"
    ), base


def unpack(server: Path, out: Path) -> dict[str, Path]:
    """The matrix jobs' artifacts and the report, unzipped into out/artifacts/NAME."""
    found = {}
    for archive in sorted(server.glob("*/*/*.zip")):
        name = archive.parent.name
        if name == "harness-image":
            continue
        target = out / "artifacts" / name
        with zipfile.ZipFile(archive) as z:
            z.extractall(target)
        found[name] = target
    return found


def results_of(folder: Path) -> list[CellResult]:
    return [CellResult.load(p) for p in sorted(folder.rglob("result.json"))]


def nightly_checks(jobs: list[Job], artifacts: dict[str, Path], sizes: list[str],
                   releases: list[str], args: argparse.Namespace) -> list[Check]:  # fmt: skip
    cells = [j for j in jobs if j.job_id == "scenarios"]
    image = [j for j in jobs if j.job_id == "image"]
    ran = sorted((j.matrix.get("flash_size", ""), j.matrix.get("firmware", "")) for j in cells)
    wanted = sorted((s, r) for s in sizes for r in releases)
    checks = [
        Check("the image job built and saved the image", len(image) == 1 and not image[0].red,
              ", ".join(f"{k}: {v}" for k, v in (image[0].steps if image else {}).items())),
        Check("every matrix cell ran as a job", ran == wanted, f"ran {ran}, wanted {wanted}"),
    ]  # fmt: skip
    every: list[CellResult] = []
    for job in cells:
        size, release = job.matrix["flash_size"], job.matrix["firmware"]
        name = f"scenarios-{size}-{release}"
        folder = artifacts.get(name)
        results = results_of(folder) if folder else []
        every += results
        checks += job_checks(job, name, folder, results, args)
    uploaded = [n for n in artifacts if n.startswith("scenarios-")]
    checks.append(
        Check(
            "each job uploaded under its own name (from the matrix values)",
            len(uploaded) == len(set(uploaded)) == len(cells),
            ", ".join(uploaded),
        )
    )
    checks += report_checks(jobs, artifacts, every)
    return checks


def job_checks(job: Job, name: str, folder: Path | None, results: list[CellResult],
               args: argparse.Namespace) -> list[Check]:  # fmt: skip
    """One matrix job: its container run, the scenarios it covered, red iff a cell failed."""
    label = f"{job.matrix['flash_size']} {job.matrix['firmware']}"
    inside = [r for r in results if r.artifacts.startswith("/artifacts/")]
    docker_step = next((s for s in job.steps if s == "Scenario library"), None)
    checks = [
        Check(f"{label}: uploaded {name}", folder is not None),
        Check(f"{label}: the scenarios ran in the container (`docker run`, artifacts "
              "written at /artifacts)", docker_step is not None and bool(results)
              and len(inside) == len(results), f"{len(inside)} of {len(results)} cells"),
    ]  # fmt: skip
    for path in [*args.scenarios.split(), *args.extra.split()]:
        folder_in_image = path if path.startswith("/") else f"/work/{path}"
        files = expected_files(path, job.matrix["flash_size"])
        seen = {Path(r.scenario).name for r in results
                if folder_in_image in (str(Path("/work", r.scenario)),
                                       str(Path("/work", r.scenario).parent))}  # fmt: skip
        missing = sorted(files - seen)
        detail = f"{len(seen)} files; missing: {', '.join(missing) or 'none'}"
        checks.append(Check(f"{label}: every scenario of {path} at this size has cells",
                            bool(seen) and not missing, detail))  # fmt: skip
    failed = [r.name for r in results if r.status == "failed"]
    detail = f"job {'red' if job.red else 'green'}, failed: {', '.join(failed) or 'none'}"
    checks.append(Check(f"{label}: the job is red exactly when a cell failed",
                        job.red == bool(failed), detail))  # fmt: skip
    rows = [row(r) for r in results]
    checks.append(Check(f"{label}: its job summary lists each of its cells",
                        bool(rows) and all(r in job.summary for r in rows),
                        f"{sum(r in job.summary for r in rows)} of {len(rows)}"))  # fmt: skip
    return checks


def expected_files(path: str, size: str) -> set[str]:
    """The scenario files under `path` (the image's /scenarios is this repository's
    scenarios/) whose matrix has `size`."""
    local = ROOT / path.removeprefix("/") if path.startswith("/scenarios") else ROOT / path
    files = [local] if local.is_file() else sorted(local.glob("*.yaml"))
    chosen = set()
    for file in files:
        try:
            sizes = [str(s) for s in scenario_format.load(file).matrix.flash_size]
        except HarnessError:
            continue
        if size in sizes:
            chosen.add(file.name)
    return chosen


def row(result: CellResult) -> str:
    """The start of the cell's row in `harness report`'s markdown table."""
    scenario, _, cell = result.name.partition("[")
    return f"| {scenario} | {cell.rstrip(']')} |"


def report_checks(jobs: list[Job], artifacts: dict[str, Path],
                  every: list[CellResult]) -> list[Check]:  # fmt: skip
    report = next((j for j in jobs if j.job_id == "report"), None)
    page = artifacts.get("report", Path("/nonexistent")) / "report.html"
    statuses = grid_statuses(page) if page.is_file() else []
    want = sorted(r.status for r in every)
    rows = [row(r) for r in every]
    summary = report.summary if report else ""
    return [
        Check("the report job merged every job's artifacts into report.html",
              report is not None and not report.red and page.is_file(),
              ", ".join(f"{k}: {v}" for k, v in (report.steps if report else {}).items())),
        Check("report.html, opened in Chromium, has one grid cell per cell of every job, "
              "each with its status", sorted(statuses) == want and bool(want),
              f"{len(statuses)} grid cells ({count(statuses)}), {len(want)} cells ({count(want)})"),
        Check("the report job's summary lists every cell",
              bool(rows) and all(r in summary for r in rows),
              f"{sum(r in summary for r in rows)} of {len(rows)}"),
    ]  # fmt: skip


def count(statuses: list[str]) -> str:
    return ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses))) or "none"


def grid_statuses(page: Path) -> list[str]:
    """The status of each grid cell of the page, read in Debian's headless Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SetupError("chromium not found: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            view = browser.new_page()
            errors: list[str] = []
            view.on("pageerror", lambda e: errors.append(str(e)))
            view.goto(page.resolve().as_uri())
            view.screenshot(path=str(page.with_suffix(".png")))
            found = view.locator("td.cell").evaluate_all("els => els.map(e => e.dataset.status)")
        finally:
            browser.close()
    if errors:
        raise SetupError(f"{page} raised in Chromium: {errors[0]}")
    return [str(s) for s in found]


# -- ci.yml --------------------------------------------------------------------------------


def ci(args: argparse.Namespace) -> int:
    out = fresh(OUT / "ci")
    jobs: list[Job] = []
    with ExitStack() as stack:
        mirror = stack.enter_context(served(SHARED / "firmware"))
        say(f"firmware mirror (HARNESS_FIRMWARE_MIRROR): {SHARED / 'firmware'} served at {mirror}")
        tools = tool_cache(ROOT / "build" / "act")
        for name in args.job:
            act = Act(ROOT / ".github/workflows/ci.yml", out / name, (
                "--env", f"AGENT_TOOLSDIRECTORY={tools}",
                "--env", f"HARNESS_FIRMWARE_CACHE={out / 'firmware-cache'}",
                "--var", f"HARNESS_FIRMWARE_MIRROR={mirror}", "-j", name,
            ), event="push")  # fmt: skip
            jobs += act.run()
    checks = [Check(f"{name}: ran and is green", any(j.job_id == name and not j.red for j in jobs))
              for name in args.job]  # fmt: skip
    return verdict(jobs, checks, out, {})


# -- the outcome ---------------------------------------------------------------------------


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def verdict(jobs: list[Job], checks: list[Check], out: Path, artifacts: dict[str, Path]) -> int:
    say("\njob                                              result    wall")
    for job in jobs:
        label = " ".join([job.job_id, *job.matrix.values()])
        say(f"{label:<48} {'failure' if job.red else 'success':<9} {job.seconds:7.0f} s")
    say("")
    for check in checks:
        detail = f": {check.detail}" if check.detail else ""
        say(f"{'ok  ' if check.ok else 'FAIL'} {check.what}{detail}")
    if "report" in artifacts:
        say(f"report: {artifacts['report'] / 'report.html'}")
    (out / "run.json").write_text(json.dumps({
        "jobs": [j.to_json() for j in jobs],
        "checks": [{"what": c.what, "ok": c.ok, "detail": c.detail} for c in checks],
        "artifacts": sorted(artifacts),
    }, indent=2) + "\n")  # fmt: skip
    held = all(c.ok for c in checks)
    green = bool(jobs) and not any(j.red for j in jobs)
    say(f"\nchecks: {'all held' if held else 'FAILED'}; jobs: "
        f"{'all green' if green else 'some red'} (run.json in {out})")  # fmt: skip
    return 0 if held and green else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="workflow", required=True)
    night = sub.add_parser("nightly", help=".github/workflows/nightly.yml")
    night.add_argument("--releases", default="v1.25.0", help="nightly releases, or 'all'")
    night.add_argument("--sizes", default="4MB 16MB")
    night.add_argument("--scenarios", default=" ".join(LIBRARY))
    night.add_argument("--extra", default="", help="more scenario paths of this repository")
    night.set_defaults(func=nightly)
    job = sub.add_parser("ci", help=".github/workflows/ci.yml")
    job.add_argument("--job", action="append", help="lint, tests (default: both)")
    job.set_defaults(func=ci)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # stopped like Ctrl-C: everything torn down
    if args.workflow == "ci" and not args.job:
        args.job = ["lint", "tests"]
    try:
        return int(args.func(args))
    except (SetupError, HarnessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: act, the podman service, the servers and the containers stopped",
              file=sys.stderr)  # fmt: skip
        return 130


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
