"""A user's own steps and faults, from an installed package: tests/example_plugin adds a
`note` step and an `erase_sector` fault through the entry-point group
`esp32_ota_harness`. Installed here as pip would leave it, by an entry-point file in a
`*.dist-info` folder on the path, in a fresh interpreter each time (plugins load once,
before the scenario schema is built)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.scenario.results import load_cell

PACKAGE = Path(__file__).parent / "example_plugin"
SCENARIO = """\
title: a plugin's step and fault
matrix: {flash_size: [4MB], firmware: [ESP32_GENERIC@v1.27.0]}
steps:
  - boot: prompt
  - repl: "import esp32; n = esp32.NVS('app'); n.set_i32('runs', 1); n.commit()"
  - note: before the fault
  - erase_sector: {partition: nvs, sectors: [3, 0]}
  - boot: prompt
  - note: after the fault
  - repl: {code: "print(6 * 7)", expect: "42"}
"""


def installed(tmp_path: Path, value: str = "harness_example_plugin") -> dict[str, str]:
    """The environment of an interpreter that has the example plugin installed."""
    site = tmp_path / "site"
    info = site / "harness_example_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-example-plugin\n"
                                   "Version: 0.1\n")  # fmt: skip
    (info / "entry_points.txt").write_text(f"[esp32_ota_harness]\nexample = {value}\n")
    path = os.pathsep.join([str(site), str(PACKAGE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep)}


def harness(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`harness ARGS...` in an interpreter with environment `env`."""
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)  # fmt: skip


LOAD = ("import sys, pathlib; from harness.scenario import format; "
        "format.load(pathlib.Path(sys.argv[1]))")  # fmt: skip


def check(env: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    """Load (validate) a scenario file in an interpreter with environment `env`."""
    return subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True,
                          text=True, env=env, timeout=60)  # fmt: skip


def test_a_plugins_steps_are_in_the_schema_and_the_step_reference(tmp_path: Path) -> None:
    env = installed(tmp_path)
    reference = harness(env, "schema", "--steps")
    assert reference.returncode == 0, reference.stderr
    rows = {line.split("|")[1].strip() for line in reference.stdout.splitlines()[2:]}
    assert {"`note`", "`erase_sector`", "`power_cut`", "`bit_flip`"} <= rows
    schema = json.loads(harness(env, "schema").stdout)
    assert {"note", "erase_sector"} <= set(schema["$defs"])
    plain = harness(dict(os.environ), "schema", "--steps")  # without the plugin: not there
    assert "`note`" not in plain.stdout and "`bit_flip`" in plain.stdout


def test_a_scenario_using_a_plugins_step_and_fault_validates(tmp_path: Path) -> None:
    env = installed(tmp_path)
    good = tmp_path / "good.yaml"
    good.write_text(SCENARIO)
    run = check(env, good)
    assert run.returncode == 0, run.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.replace("sectors: [3, 0]", "sector: 3"))
    run = check(env, bad)
    assert f"{bad}:7: steps.3.erase_sector" in run.stderr.splitlines()[-1]
    unpowered = tmp_path / "unpowered.yaml"
    unpowered.write_text(SCENARIO.replace("  - boot: prompt\n  - note: after", "  - note: after"))
    run = check(env, unpowered)
    assert "`erase_sector` leaves the board off: make the next step `boot`" in run.stderr
    without = check(dict(os.environ), good)  # the same file where the plugin is not installed
    assert "unknown step 'note'" in without.stderr


def test_a_plugin_that_cannot_be_loaded_is_one_line_naming_it(tmp_path: Path) -> None:
    env = installed(tmp_path, "harness_example_plugin.nowhere")
    run = harness(env, "schema")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [
        "error: plugin example (harness_example_plugin.nowhere, entry point esp32_ota_harness) "
        "cannot be loaded: ModuleNotFoundError: No module named 'harness_example_plugin.nowhere'"
    ]


@getattr(pytest.mark, "4mb")
def test_a_plugins_step_and_fault_run_through_the_runner_and_the_reports(
    qemu, firmware_dir: Path, tmp_path: Path
) -> None:
    """The fault's points are powered on one by one like a power cut's; its outcomes reach
    result.json, the text report and JUnit as any fault's, readable without the plugin."""
    env = installed(tmp_path)
    path = tmp_path / "plugin.yaml"
    path.write_text(SCENARIO)
    junit = tmp_path / "junit.xml"
    run = harness(env, "run", str(path), "--qemu", str(qemu), "--firmware-dir",
                  str(firmware_dir), "--artifacts", str(tmp_path / "art"), "--junit", str(junit),
                  timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "step 4 `erase_sector`: 2 of 2 points passed" in run.stdout
    result = load_cell(tmp_path / "art" / "plugin[4mb-v1.27.0]")  # here, without the plugin
    assert [(o.fault, o.step, o.point.short, o.changed) for o in result.faults] == [
        ("erase_sector", 4, "sector 0", {"nvs": 1}),  # where the NVS entry was written
        ("erase_sector", 4, "sector 3", {}),  # still erased: the same flash
    ]
    assert all(o.status == "passed" and o.booted == "factory" for o in result.faults)
    log = (result.last_run / "serial.log").read_text(errors="replace")
    assert log.count("-- note: before the fault") == 1
    assert log.count("-- note: after the fault") == 2  # once per point
    assert [r.branch for r in result.timeline if r.step == "note"] == [
        None, "erase_sector sector 0", "erase_sector sector 3"
    ]  # fmt: skip
    case = ET.parse(junit).getroot().find("testcase")
    assert case is not None
    props = [p.get("value") or "" for p in case.iter("property") if p.get("name") == "erase_sector"]
    # with the verdict, judged from the flash and the MMU (no update: the app that ran)
    ran = "booted factory, old app running (factory), otadata -"
    assert props == [f"sector 0 of nvs erased: passed, {ran}",
                     f"sector 3 of nvs erased: passed, {ran}"]  # fmt: skip
