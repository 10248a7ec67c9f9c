"""Real firmware boots to the >>> prompt in Espressif's QEMU, on 4MB and 16MB flash."""

from __future__ import annotations

import re

import pytest
from guest_code import ARM_TG1_WDT

from harness.emulator import device, policy
from harness.emulator.console import RESET_BANNER
from harness.emulator.device import BootOptions
from harness.errors import DeviceTimeout
from harness.flash.size import MB

MB4, MB16 = getattr(pytest.mark, "4mb"), getattr(pytest.mark, "16mb")
# Builds before ESP-IDF 5.0.4 deadlock in QEMU 8.0 now and then even alone
# (docs/known-behaviour.md): like scenario cells, they get the run policy's retries for such
# builds, on its errors only (the plugin's --retries); a wrong answer is never rerun.
OLD_BUILD = pytest.mark.stalling_build
FIRMWARE = [
    pytest.param("ESP32_GENERIC-20230426-v1.20.0.bin", marks=OLD_BUILD),
    pytest.param("ESP32_GENERIC-SPIRAM-20231005-v1.21.0.bin", marks=OLD_BUILD),
    "ESP32_GENERIC-OTA-20231227-v1.22.0.bin",
    "ESP32_GENERIC-20240602-v1.23.0.bin",
    "ESP32_GENERIC-20241025-v1.24.0.bin",
    "ESP32_GENERIC-OTA-20250415-v1.25.0.bin",
    "ESP32_GENERIC-20251209-v1.27.0.bin",  # no vfs line: MicroPython makes it at boot
]
# (firmware, layout): OTA builds keep their table; v1.23.0 is converted to --table ota
SIXTEEN = [
    ("ESP32_GENERIC-OTA-20231227-v1.22.0.bin", "keep"),
    ("ESP32_GENERIC-OTA-20250415-v1.25.0.bin", "keep"),
    ("ESP32_GENERIC-20240602-v1.23.0.bin", "ota"),
    ("ESP32_GENERIC-20251209-v1.27.0.bin", "ota"),  # -f 16M alone: no vfs line to grow
]
RUNNING = "import esp32; print(esp32.Partition(esp32.Partition.RUNNING).info()[4])"
FLASH_SIZE = "import esp; print(esp.flash_size())"


def _version(name: str) -> str:
    return re.search(r"-(v\d+\.\d+\.\d+)\.", name).group(1)


@MB4
@pytest.mark.parametrize("name", FIRMWARE)
def test_boots_on_4mb(name, qemu, fw, build_image, tmp_path) -> None:
    image = build_image(fw(name), "4MB")
    with device.boot(
        image, BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path)
    ) as dev:
        dev.wait_prompt(30)
        assert f"MicroPython {_version(name)}" in (dev.run_dir / "serial.log").read_text()
        assert dev.repl.exec(FLASH_SIZE).strip() == str(4 * MB)
        assert dev.repl.exec("print(6 * 7)").strip() == "42"


@MB16
@pytest.mark.parametrize(("name", "layout"), SIXTEEN)
def test_boots_on_16mb_as_users_convert_it(name, layout, qemu, fw, build_image, tmp_path) -> None:
    """`mp-image-tool-esp32 FILE -f 16M [--table ota] --resize vfs=0`, then padded."""
    image = build_image(fw(name), "16MB", layout=layout)
    with device.boot(
        image, BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path)
    ) as dev:
        dev.wait_prompt(30)
        assert dev.repl.exec(FLASH_SIZE).strip() == str(16 * MB)
        assert dev.repl.exec(RUNNING).strip() == "ota_0"
        P = "esp32.Partition"
        vfs = f"import esp32; print({P}.find({P}.TYPE_DATA, label='vfs')[0].info()[3])"
        assert int(dev.repl.exec(vfs)) > 11 * MB  # --resize vfs=0 grew it


@MB4
def test_the_machine_says_where_each_cpu_is(qemu, fw, build_image, tmp_path) -> None:
    """QMP's view of both emulated CPUs: what a stall is diagnosed with (harness.scenario.runner).
    At the idle prompt both run code (ROM, IRAM or flash: 0x4000_0000-0x40C0_0000) and
    neither sits in a high-level interrupt handler."""
    image = build_image(fw("OTA-20250415-v1.25.0"), "4MB")
    with device.boot(
        image, BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path)
    ) as dev:
        dev.wait_prompt(30)
        states = dev.board.cpu_states()
        assert [s.cpu for s in states] == [0, 1], states
        assert all(0x4000_0000 <= s.pc < 0x40C0_0000 and s.intlevel < 4 for s in states), states
        dev.board.power_cut()
        assert dev.board.cpu_states() == []  # QEMU gone: nothing to say, no error


@MB4
def test_the_library_api_boots_with_the_watchdogs_off_unless_told(qemu, fw, build_image, tmp_path):
    """One default for every entry point: device.boot() as the CLI and the plugin, off.
    Armed by hand and starved, timer group 1's watchdog then never resets the guest."""
    image = build_image(fw("OTA-20250415-v1.25.0"), "4MB")
    with device.boot(
        image, BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path)
    ) as dev:
        dev.wait_prompt(30)
        assert "wdt_disable,value=true" in (dev.run_dir / "qemu-cmdline.txt").read_text()
        dev.repl.exec_start(ARM_TG1_WDT)
        with pytest.raises(DeviceTimeout):
            dev.console.expect(RESET_BANNER, 3, during="a starved watchdog", fail_fast=False)
