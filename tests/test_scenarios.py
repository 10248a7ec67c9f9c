"""Scenario files: validation with file:line errors, the matrix, and `harness run` end to end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.flash.firmware import FirmwareFacts
from harness.flash.size import FlashSize
from harness.scenario import format as scenario
from harness.scenario import plan, steps
from harness.scenario.format import ScenarioError
from harness.sources.manifest import FirmwareSelector

ROOT = Path(__file__).parent.parent
LIBRARY = sorted((ROOT / "scenarios").glob("*.yaml"))
EVERY_LIBRARY_FILE = sorted((ROOT / "scenarios").rglob("*.yaml"))  # power-loss/ too

GOOD = """\
title: t
source: s
matrix:
  flash_size: [4MB, 16MB]
  firmware: ["${firmware_dir}/ESP32_GENERIC-OTA-*-v1.25.0.bin"]
steps:
  - boot: prompt
  - assert_booted: ota_0
"""


NO_OPTIONS = plan.RunOptions()


def skip_reason(cell: plan.Cell) -> str | None:
    return cell.reason if isinstance(cell, plan.Skipped) else None


def facts(cell: plan.Cell) -> FirmwareFacts:
    assert cell.firmware is not None
    return FirmwareFacts.read(cell.firmware.path)


def one_cell(loaded: scenario.Scenario, chooser: FirmwareSelector, firmware: Path) -> plan.Cell:
    return plan.cells(loaded, chooser, plan.RunOptions(firmware=(str(firmware),)))[0]


def write(tmp_path: Path, text: str, name: str = "case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        scenario.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:")
    return message.removeprefix(f"{path}:")


@pytest.mark.parametrize("path", EVERY_LIBRARY_FILE, ids=lambda p: p.stem)
def test_every_library_scenario_loads_and_names_its_source(path: Path) -> None:
    """The library's convention, not the format's: each of its files says where the
    failure was reported (a user's own scenario need not)."""
    loaded = scenario.load(path)
    assert loaded.title and loaded.source, f"{path}: the library's scenarios name a source:"
    assert loaded.matrix.flash_size


def test_the_library_covers_what_the_issue_lists() -> None:
    names = {p.stem for p in LIBRARY}
    assert {
        "ota-full-image-into-slot", "ota-good-update-confirmed", "ota-rollback-unconfirmed",
        "app-larger-than-slot", "erased-slot-selected", "corrupted-download",
        "truncated-download", "corrupted-otadata", "flash-size-mismatch",
        "psram-build-without-psram", "psram-build-with-psram", "boot-loop",
    } <= names  # fmt: skip


def test_cells_and_ids(tmp_path: Path, firmware_dir: Path) -> None:
    loaded = scenario.load(write(tmp_path, GOOD))
    cells = plan.cells(loaded, FirmwareSelector(local=firmware_dir, download=False), NO_OPTIONS)
    assert [c.name for c in cells] == ["case[4mb-v1.25.0]", "case[16mb-v1.25.0]"]
    assert all(c.firmware and c.firmware.path.is_file() for c in cells)
    only16 = plan.cells(loaded, FirmwareSelector(local=firmware_dir),
                        plan.RunOptions(flash_sizes=(FlashSize(16),)))  # fmt: skip
    assert [c.id for c in only16] == ["16mb-v1.25.0"]
    other = sorted(firmware_dir.glob("*OTA*v1.22.0.bin"))
    replaced = plan.cells(loaded, FirmwareSelector(local=firmware_dir),
                          plan.RunOptions(firmware=tuple(str(p) for p in other)))  # fmt: skip
    assert [c.id for c in replaced] == ["4mb-v1.22.0", "16mb-v1.22.0"]


def test_missing_firmware_is_a_skip_with_a_reason(tmp_path: Path) -> None:
    loaded = scenario.load(write(tmp_path, GOOD))
    cell = plan.cells(loaded, FirmwareSelector(local=tmp_path / "empty", download=False),
                      NO_OPTIONS)[0]  # fmt: skip
    assert cell.firmware is None
    assert "no firmware file matches" in (skip_reason(cell) or "")


def test_requirements_skip_cells_that_cannot_apply(tmp_path: Path, fw) -> None:
    """OTA slots are made where a release has none; app rollback cannot be, so it skips."""
    text = GOOD.replace("title: t", "title: t\nrequires: [ota, rollback]")
    loaded = scenario.load(write(tmp_path, text))
    chooser = FirmwareSelector(download=False)
    plain = one_cell(loaded, chooser, fw("20241025-v1.24.0"))
    assert skip_reason(plain) is None and plan.needs_ota_layout(loaded, facts(plain))
    ota = one_cell(loaded, chooser, fw("OTA-20250415-v1.25.0"))
    assert skip_reason(ota) is None and not plan.needs_ota_layout(loaded, facts(ota))
    old = one_cell(loaded, chooser, fw("20230426-v1.20.0"))
    reason = skip_reason(old) or ""
    assert "needs app rollback" in reason and "v1.20.0" in reason
    assert not facts(old).rollback and facts(ota).rollback  # the reason is true
    spiram = scenario.load(
        write(tmp_path, GOOD.replace("title: t", "title: t\nrequires: [spiram]"))
    )
    assert "needs a SPIRAM build" in (skip_reason(one_cell(spiram, chooser, fw("v1.27.0")))
                                      or "")  # fmt: skip


def test_yaml_syntax_error(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("  - boot: prompt", "  - boot: [prompt"))
    assert message.startswith("8:") or message.startswith("9:")
    assert "YAML syntax error" in message


def test_unknown_step(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("assert_booted: ota_0", "flash_it: now"))
    assert message.startswith("8: steps.1: unknown step 'flash_it'")
    assert "known steps: boot, expect" in message


def test_missing_field(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("title: t\n", ""))
    assert message == "1: scenario: missing required field 'title'"


def test_a_users_scenario_needs_no_source(tmp_path: Path) -> None:
    """Copied from the docs without the `source:` line, as a new user would write it."""
    loaded = scenario.load(write(tmp_path, GOOD.replace("source: s\n", "")))
    assert loaded.source is None and loaded.title == "t"


def test_missing_step_argument(tmp_path: Path) -> None:
    text = GOOD.replace("assert_booted: ota_0", "ota: {confirm: true}")
    assert error_of(tmp_path, text) == "8: steps.1.ota: missing required field 'payload'"


def test_wrong_type(tmp_path: Path) -> None:
    text = GOOD.replace("assert_booted: ota_0", "expect: {pattern: x, timeout: soon}")
    message = error_of(tmp_path, text)
    assert message.startswith("8: steps.1.expect.timeout:")
    assert "'soon'" in message


def test_unknown_field_in_a_step(tmp_path: Path) -> None:
    text = GOOD.replace("assert_booted: ota_0", "reset: {kind: soft, hardness: 3}")
    assert error_of(tmp_path, text) == "8: steps.1.reset.hardness: unknown field 'hardness'"


def test_flash_size_qemu_cannot_emulate(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("[4MB, 16MB]", "[4MB, 3MB]"))
    assert message.startswith("4: matrix.flash_size:")
    assert "3MB cannot be emulated" in message


def test_unknown_variable(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("${firmware_dir}", "${firmwaredir}"))
    assert message.startswith("5: unknown variable ${firmwaredir}")
    assert "firmware_dir" in message


def test_partition_offsets_are_variables_of_the_run(tmp_path: Path, firmware_dir: Path) -> None:
    """${offset_NAME} passes validation for any name, stays as it is until the cell runs,
    then is the partition's offset in the cell's image, or a line naming the missing one."""
    text = GOOD.replace("  - assert_booted: ota_0", "  - run: {command: 'echo ${offset_ota_1}'}")
    selector = FirmwareSelector(local=firmware_dir, download=False)
    cell = plan.cells(scenario.load(write(tmp_path, text)), selector, NO_OPTIONS)[0]
    assert isinstance(cell, plan.CellPlan)
    assert cell.expand_text("${offset_ota_1} ${port}") == "${offset_ota_1} ${port}"
    assert cell.expand_text("${offset_ota_1}", runtime={"offset_ota_1": "0x190000"}) == "0x190000"
    missing = r":8: \$\{offset_vfs2\}: the image has no partition vfs2$"
    with pytest.raises(ScenarioError, match=missing):
        cell.expand_text("${offset_vfs2}", ("steps", 1), runtime={"offset_ota_1": "0x190000"})


def test_device_step_before_boot(tmp_path: Path) -> None:
    text = GOOD.replace(
        "  - boot: prompt\n  - assert_booted: ota_0", "  - assert_booted: ota_0\n  - boot: prompt"
    )
    assert "put it after the `boot` step" in error_of(tmp_path, text)


def test_a_step_with_two_names(tmp_path: Path) -> None:
    text = GOOD.replace("  - assert_booted: ota_0", "  - assert_booted: ota_0\n    reset: soft")
    assert "a step is a mapping with one key" in error_of(tmp_path, text)


def test_not_a_mapping(tmp_path: Path) -> None:
    assert "a scenario is a YAML mapping" in error_of(tmp_path, "- just\n- a list\n")


def test_json_schema_names_every_step() -> None:
    """Each member of the schema's step union is a mapping with one key, the step's name,
    whose value is that step's format: the keys are exactly the registered steps."""
    schema = scenario.json_schema()
    defs = schema["$defs"]
    keys = []
    for member in schema["properties"]["steps"]["items"]["oneOf"]:
        step = defs[member["$ref"].removeprefix("#/$defs/")]
        assert step["additionalProperties"] is False and len(step["properties"]) == 1, step
        (key,) = step["properties"]
        assert step["required"] == [key]
        args = defs[step["properties"][key]["$ref"].removeprefix("#/$defs/")]
        assert args["title"] == scenario.STEP_FORMATS[key].__name__
        keys.append(key)
    assert sorted(keys) == sorted(scenario.STEP_FORMATS)


def test_every_step_format_has_a_handler_and_nothing_else_does() -> None:
    assert set(steps.handlers()) == set(scenario.STEP_FORMATS)


def test_the_format_loads_no_emulator_code() -> None:
    """`harness schema` and editors import the format alone: no QEMU, pexpect, pyserial."""
    code = (
        "import sys; import harness.scenario.format as f; f.load(__import__('pathlib')."
        f"Path({str(LIBRARY[0])!r})); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pexpect', 'qemu', 'serial', 'ptyprocess') or m.startswith('harness.emulator')))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", run.stdout
    schema = subprocess.run([sys.executable, "-X", "importtime", "-m", "harness", "schema"],
                            capture_output=True, text=True)  # fmt: skip
    assert schema.returncode == 0 and '"title": "Scenario"' in schema.stdout
    loaded = {line.split("|")[-1].strip() for line in schema.stderr.splitlines()}
    emulator = {m for m in loaded if m.split(".")[0] in ("pexpect", "qemu", "serial")
                or m in ("harness.emulator.qemu", "harness.emulator.console")}  # fmt: skip
    assert not emulator, emulator


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", "run", *args],
                          capture_output=True, text=True, timeout=600, **kw)  # fmt: skip


def test_harness_run_malformed_scenario_is_one_line_and_boots_nothing(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD.replace("assert_booted: ota_0", "flash_it: now"))
    before = bad.read_bytes()
    run = run_cli(str(bad), "--artifacts", str(tmp_path / "art"))
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines()[0].startswith(f"error: {bad}:8: steps.1: unknown step")
    assert not (tmp_path / "art").exists()
    assert bad.read_bytes() == before


def test_harness_run_missing_file(tmp_path: Path) -> None:
    run = run_cli(str(tmp_path / "nope.yaml"))
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {tmp_path / 'nope.yaml'}: cannot read scenario")


def test_harness_run_firmware_that_is_not_there(tmp_path: Path) -> None:
    run = run_cli(str(LIBRARY[0]), "--firmware", str(tmp_path / "fw.bin"))
    assert run.returncode == 2
    assert "--firmware" in run.stderr.splitlines()[0] and "no such file" in run.stderr


@getattr(pytest.mark, "16mb")
@pytest.mark.parametrize(
    "firmware", ["OTA-20231227-v1.22.0", "OTA-20250415-v1.25.0", "20251209-v1.27.0"]
)
def test_harness_run_reproduces_the_report_with_every_ota_firmware(
    qemu, fw, tmp_path: Path, firmware: str
) -> None:
    """The acceptance command, with JUnit XML carrying the serial log."""
    junit = tmp_path / "junit.xml"
    run = run_cli(
        str(ROOT / "scenarios" / "ota-full-image-into-slot.yaml"), "--flash-size", "16MB",
        "--firmware", str(fw(firmware)), "--qemu", str(qemu),
        "--artifacts", str(tmp_path / "art"), "--junit", str(junit),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    version = firmware.rsplit("-", 1)[1]
    assert f"PASS ota-full-image-into-slot[16mb-{version}]" in run.stdout
    assert "booted ota_0" in run.stdout
    case = ET.parse(junit).getroot().find("testcase")
    assert case is not None and case.get("name") == f"ota-full-image-into-slot[16mb-{version}]"
    out = case.findtext("system-out") or ""
    assert "overlaps bootloader data" in out and "OTA app partition slot 1 is not bootable" in out
    folder = tmp_path / "art" / f"ota-full-image-into-slot[16mb-{version}]"
    for name in ("serial.log", "qemu-cmdline.txt", "timeline.json", "flash-before.json",
                 "flash-after.json", "result.json"):  # fmt: skip
        assert (folder / name).is_file(), name
    assert not (folder / "flash.bin").exists()  # kept only when a cell fails


@getattr(pytest.mark, "4mb")
def test_a_failing_scenario_names_step_expectation_and_artifacts(qemu, fw, tmp_path: Path) -> None:
    """A scenario that expects the wrong partition must fail, and say where and why."""
    text = GOOD.replace("[4MB, 16MB]", "[4MB]").replace(
        "assert_booted: ota_0", "assert_booted: ota_1"
    )
    path = write(tmp_path, text)
    run = run_cli(str(path), "--firmware", str(fw("OTA-20250415-v1.25.0")), "--qemu", str(qemu),
                  "--artifacts", str(tmp_path / "art"))  # fmt: skip
    assert run.returncode == 1
    assert f"step 2 `assert_booted` ({path}:8) failed: running from ota_0, expected ota_1" in (
        run.stdout
    )
    assert "artifacts: " in run.stdout
    assert (tmp_path / "art" / "case[4mb-v1.25.0]" / "flash.bin").is_file()


def test_a_scenario_expecting_a_watchdog_reset_must_keep_the_watchdogs_on(tmp_path: Path) -> None:
    text = GOOD.replace("assert_booted: ota_0", "expect: 'rst:0x8 (TG1WDT_SYS_RESET)'")
    message = error_of(tmp_path, text)
    assert message.startswith("8: steps.1: expects a watchdog reset: set `watchdogs: on`")
    scenario.load(write(tmp_path, text.replace("title: t", "title: t\nwatchdogs: 'on'"), "ok.yaml"))


def test_every_skip_in_the_matrix_has_a_true_reason(firmware_dir: Path) -> None:
    """make test-matrix: every library scenario x every firmware file; each skip's reason
    must hold for that firmware (read from the image), and cells not skipped must not
    lack what their scenario needs."""
    chooser = FirmwareSelector(local=firmware_dir, download=False)
    files = [str(p) for p in sorted(firmware_dir.glob("*.bin"))]
    checked = 0
    for path in LIBRARY:
        loaded = scenario.load(path)
        for cell in plan.cells(loaded, chooser, plan.RunOptions(firmware=tuple(files))):
            facts_, needs, reason = facts(cell), loaded.needs(), skip_reason(cell)
            lacks = {
                "needs a SPIRAM build": "spiram" in needs and not facts_.spiram,
                "without OTA partitions": "no-ota" in needs and facts_.ota_slots,
                "needs app rollback": "rollback" in needs and not facts_.rollback,
                "names the filesystem": "vfs-in-table" in needs and not facts_.fs_in_table,
                "makes its filesystem at boot": "vfs-at-boot" in needs and facts_.fs_in_table,
            }
            if reason is None:
                assert not any(lacks.values()), (cell.name, lacks)
            else:
                true = any(lacks[phrase] for phrase in lacks if phrase in reason)
                assert true, (cell.name, reason)
                checked += 1
    assert checked > 20  # the matrix does skip: PSRAM, rollback and vfs-line cells


def test_every_ota_method_has_one_strategy_and_one_meaning() -> None:
    """The names a scenario's `method:` takes, what each means for the plan
    (stepformats.OTA_METHODS) and the strategy that runs it (ota.METHODS) agree."""
    from typing import get_args

    from harness.emulator import ota
    from harness.scenario.stepformats import OTA_METHODS, OtaMethodName

    assert set(get_args(OtaMethodName)) == set(OTA_METHODS) == set(ota.METHODS)
    assert all(name == m.name for name, m in OTA_METHODS.items())
