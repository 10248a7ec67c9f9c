"""One run policy: every entry point boots a firmware the same way unless told otherwise.

The CLI (`harness boot`), a scenario cell (`harness run`), the library API
(`device.boot` with `policy.for_image`) and the plugin's `board` fixture each boot the
v1.25.0 OTA firmware on 4MB; their QEMU command lines are the same once the paths of the
run's own files are taken out (watchdogs off, no PSRAM, UART1 wired), and a policy told
otherwise shows in the command line.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness.emulator import device, policy
from harness.emulator.device import BootOptions
from harness.flash.firmware import FirmwareFacts

SCENARIO = """\
title: boots
source: the policy test
matrix: {{flash_size: [4MB], firmware: ["{firmware}"]}}
steps:
  - boot: prompt
"""


def command_line(folder: Path) -> list[str]:
    """The first QEMU command line under `folder`, with paths cut to their last part."""
    (found,) = list(folder.rglob("qemu-cmdline.txt"))[:1]
    line = found.read_text().splitlines()[0]
    return [re.sub(r"/[^,=\s]*/", "", arg) for arg in shlex.split(line)[1:]]


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@getattr(pytest.mark, "4mb")
def test_every_entry_point_boots_the_same_way(qemu, fw, build_image, board, tmp_path) -> None:
    firmware = fw("OTA-20250415-v1.25.0")
    cli = harness("boot", str(firmware), "--exec", "print(1)", "--qemu", str(qemu),
                  "--artifacts", str(tmp_path / "cli"))  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    scenario = tmp_path / "boots.yaml"
    scenario.write_text(SCENARIO.format(firmware=firmware))
    run = harness("run", str(scenario), "--qemu", str(qemu), "--artifacts", str(tmp_path / "run"))
    assert run.returncode == 0, run.stdout + run.stderr
    image = build_image(firmware, "4MB")
    options = BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path / "api")
    with device.boot(image, options) as dev:
        dev.wait_prompt(30)
    fixture = board(str(firmware), "4MB")
    lines = {
        "cli": command_line(tmp_path / "cli"),
        "run": command_line(tmp_path / "run"),
        "api": command_line(tmp_path / "api"),
        "board": command_line(fixture.run_dir),
    }
    assert all(line == lines["cli"] for line in lines.values()), lines
    assert "driver=timer.esp32.timg,property=wdt_disable,value=true" in lines["cli"]
    assert "-m" not in lines["cli"]  # no PSRAM for a build without SPIRAM
    told = BootOptions(policy.for_image(image, watchdogs=True), qemu=qemu,
                       artifacts=tmp_path / "told")  # fmt: skip
    with device.boot(image, told) as dev:
        dev.wait_prompt(30)
    told_line = command_line(tmp_path / "told")
    assert "driver=timer.esp32.timg,property=wdt_disable,value=true" not in told_line


def test_the_policy_is_decided_from_the_firmware(fw) -> None:
    """PSRAM for SPIRAM builds, the host alone for builds before ESP-IDF 5.0.4, watchdogs
    off, retries none: what every entry point gets unless told otherwise."""
    spiram = policy.for_image(fw("SPIRAM"))
    assert spiram.psram and spiram.alone and not spiram.watchdogs and spiram.retries == 0
    today = policy.for_image(fw("v1.27.0"))
    assert not today.psram and not today.alone and not today.watchdogs
    facts = FirmwareFacts.read(fw("SPIRAM"))  # where retries are on, an old build gets more
    assert policy.decide(facts, retries=1).retries == policy.STALLING_BUILD_RETRIES
    assert policy.decide(facts, retries=0).retries == 0  # RETRIES=0 still turns them off
    assert policy.decide(FirmwareFacts.read(fw("v1.27.0")), retries=1).retries == 1
    assert policy.for_image(fw("v1.27.0"), watchdogs=True, psram=True).psram
