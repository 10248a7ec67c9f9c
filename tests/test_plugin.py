"""The pytest plugin as another project sees it: installed, strict markers, its own data.

A scratch project outside this repository (no pyproject, no conftest) uses the
markers and collects a scenario that names a manifest entry; `--strict-markers` must
accept them because the plugin registers them itself. The wheel must carry the image
recipes and the firmware manifest the plugin reads.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

SCENARIO = """\
title: boots
source: scratch project
matrix: {flash_size: [4MB, 16MB], firmware: [ESP32_GENERIC-OTA@v1.25.0]}
steps:
  - boot: prompt
"""
TEST = """\
import pytest

@pytest.mark.emulation
@pytest.mark.parametrize("x", [pytest.param(1, marks=getattr(pytest.mark, "16mb"))])
def test_marked(x):
    assert x == 1
"""


def test_scratch_project_runs_with_strict_markers(tmp_path: Path) -> None:
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "boots.yaml").write_text(SCENARIO)
    (tmp_path / "test_mine.py").write_text(TEST)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--strict-markers", "-p", "no:cacheprovider",
         "-W", "error::pytest.PytestUnknownMarkWarning", "--collect-only", "-q",
         "--firmware-dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "scenarios/boots.yaml::boots[4mb-v1.25.0]" in run.stdout
    assert "scenarios/boots.yaml::boots[16mb-v1.25.0]" in run.stdout
    assert "test_mine.py::test_marked[1]" in run.stdout
    marked = subprocess.run(
        [sys.executable, "-m", "pytest", "--strict-markers", "-p", "no:cacheprovider", "-q",
         "-m", "16mb", "test_mine.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert marked.returncode == 0, marked.stdout + marked.stderr
    assert "1 passed" in marked.stdout


def test_the_wheel_carries_the_recipes_and_the_manifest(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("firmware.yaml", "recipes/4mb.yaml", "recipes/16mb.yaml",
                 "recipes/4mb-ota.yaml", "recipes/16mb-ota.yaml"):  # fmt: skip
        assert f"harness/defaults/{name}" in names, sorted(names)
    assert not any(n.startswith("images/") for n in names)
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "esp32_ota_harness = harness.frontends.pytest_plugin" in textwrap.dedent(entry_points)


USERS_TEST = """\
from pathlib import Path


def test_my_app_boots_from_ota_0(board, tmp_path):
    main = tmp_path / "main.py"
    main.write_text("VERSION = '2.1'\\n")
    dev = board("ESP32_GENERIC-OTA@v1.25.0", "4MB", vfs={"/main.py": main})
    assert dev.running_partition() == "ota_0"
    assert dev.repl.exec("import main; print(main.VERSION)").strip() == "2.1"
    dev.reset("soft")
    assert dev.running_partition() == "ota_0"
"""


@getattr(pytest.mark, "4mb")
def test_a_users_own_test_with_the_board_fixture(qemu, firmware_dir: Path, tmp_path: Path) -> None:
    """The README's example, in a project of its own: it boots, and leaves no QEMU."""
    from harness.emulator.qemu import running_qemus

    (tmp_path / "test_app.py").write_text(USERS_TEST)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py",
         "--qemu", str(qemu), "--firmware-dir", str(firmware_dir),
         f"--basetemp={tmp_path / 'base'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    assert not running_qemus(str(tmp_path))
