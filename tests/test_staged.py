"""A staged OTA write comes to exactly what a device-side write does, line for line.

The starting report's scenario runs twice on 16MB, once with the payload written by
the device (UART1, esp32.Partition.writeblocks) and once staged into the slot of the
flash file before the boot; the bootloader lines, the otadata, the booted partition
and the slot's bytes must be the same.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.emulator.ota import OtaReport
from harness.flash import formats
from harness.flash.size import FlashSize
from harness.scenario import format as scenario
from harness.scenario import plan, runner

ROOT = Path(__file__).parent.parent
TIMESTAMP = re.compile(r"^([EW]) \(\d+\) ")


def _run(method: str, tmp_path: Path, selector, qemu) -> tuple[OtaReport, bytes, str | None]:
    text = (ROOT / "scenarios" / "ota-full-image-into-slot.yaml").read_text()
    path = tmp_path / method / "report.yaml"
    path.parent.mkdir()
    path.write_text(text.replace("method: staged", f"method: {method}"))
    options = plan.RunOptions(flash_sizes=(FlashSize(16),), firmware=("ESP32_GENERIC-OTA@v1.25.0",))
    cell = plan.cells(scenario.load(path), selector, options)[0]
    setup = runner.Setup(tmp_path / method / "art", qemu, keep_flash=True)
    result = runner.run_cell(cell, setup)
    assert result.status == "passed", result.message
    report = result.detail("ota", OtaReport)
    assert report is not None and report.method == method
    flash = (Path(result.artifacts) / "flash.bin").read_bytes()
    return report, flash, result.booted


@getattr(pytest.mark, "16mb")
def test_staged_and_device_side_writes_agree(qemu, firmware_selector, tmp_path: Path) -> None:
    device, device_flash, device_booted = _run("harness", tmp_path, firmware_selector, qemu)
    staged, staged_flash, staged_booted = _run("staged", tmp_path, firmware_selector, qemu)

    def lines(report: OtaReport) -> list[str]:
        return [TIMESTAMP.sub(r"\1 ", line) for line in report.bootloader_lines]

    assert lines(staged) == lines(device)
    assert len(lines(device)) == 2 and "overlaps bootloader data" in lines(device)[0]
    assert (staged.booted, staged_booted) == (device.booted, device_booted) == ("ota_0", "ota_0")
    assert staged.target == device.target == "ota_1"
    assert staged.before is not None and device.before is not None
    assert staged.after is not None and device.after is not None
    assert staged.before.states() == device.before.states()
    assert staged.after.states() == device.after.states() == ["VALID", "PENDING_VERIFY"]
    assert staged.after.boot == device.after.boot
    assert staged.bytes_written == device.bytes_written
    assert staged.slot_matches_payload and device.slot_matches_payload and device.delivered_sha_ok
    table = formats.parse_table(device_flash)
    for name in ("ota_1", "otadata"):  # the slot's and otadata's bytes, identical
        part = table.get(name)
        assert part is not None
        assert staged_flash[part.offset : part.end] == device_flash[part.offset : part.end], name


SHORT = """\
title: t
source: s
matrix: {{flash_size: [4MB], firmware: [ESP32_GENERIC-OTA@v1.25.0]}}
{extra}
steps:
  - boot: prompt
  - {step}
"""


def _cell(
    tmp_path: Path, selector, step: str, extra: str = "", watchdogs: bool | None = None
) -> plan.Cell:
    path = tmp_path / "short.yaml"
    path.write_text(SHORT.format(step=step, extra=extra))
    return plan.cells(scenario.load(path), selector, plan.RunOptions(watchdogs=watchdogs))[0]


@getattr(pytest.mark, "4mb")
def test_the_ota_steps_timeout_bounds_the_whole_step(qemu, firmware_selector, tmp_path) -> None:
    """One second cannot hold set_boot() and the reboot: the step fails on its own clock."""
    cell = _cell(tmp_path, firmware_selector, "ota: {payload: app, method: staged, timeout: 1}")
    result = runner.run_cell(cell, runner.Setup(tmp_path / "art", qemu))
    assert result.status == "failed"
    assert "step 2 `ota`" in result.message
    assert "the step's timeout of 1s ran out before" in result.message or "timed out after 0." in (
        result.message
    )
    assert result.timeline[-1].elapsed_s < 3


@getattr(pytest.mark, "4mb")
@pytest.mark.parametrize("setting", [None, "on", "off"])
def test_the_watchdog_setting_is_explicit_and_recorded(
    qemu, firmware_selector, tmp_path, setting
) -> None:
    watchdogs = None if setting is None else setting == "on"
    cell = _cell(tmp_path, firmware_selector, "assert_booted: ota_0", watchdogs=watchdogs)
    result = runner.run_cell(cell, runner.Setup(tmp_path / "art", qemu))
    assert result.status == "passed", result.message
    cmdline = (Path(result.artifacts) / "qemu-cmdline.txt").read_text()
    disabled = "timer.esp32.timg,property=wdt_disable,value=true" in cmdline
    assert result.watchdogs is (setting == "on")  # default: off, as idf.py qemu runs
    assert disabled is (setting != "on")
    forced = _cell(tmp_path, firmware_selector, "assert_booted: ota_0", "watchdogs: on", False)
    forced_result = runner.run_cell(forced, runner.Setup(tmp_path / "art2", qemu))
    assert forced_result.watchdogs is True  # the scenario's own word wins
