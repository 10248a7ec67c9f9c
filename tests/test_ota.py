"""OTA payloads and the user's own library path.

The OTA outcomes themselves (full image refused, confirmed update, rollback, truncated
or corrupted downloads, ...) are the scenario library in `scenarios/`, collected as
tests by the plugin. Here: what inspect says of each payload, and the reporter's exact
flow through a device library (`ota.update.from_file('/fw.bin')`), which the scenarios
leave out because reading 1.5 MB through littlefs costs about a minute.

The 16MB image is the reporter's: `mp-image-tool-esp32 firmware.bin -f 16M --resize vfs=0`;
the "full image" payload is that same command's output, the app payload its `-x` extract.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guest_code import ARM_TG1_WDT

from harness.emulator import device, ota, policy
from harness.emulator.device import BootOptions
from harness.errors import WatchdogReset
from harness.flash import images
from harness.flash import inspect as inspector

NOT_BOOTABLE = "boot: OTA app partition slot 1 is not bootable"


@pytest.fixture(scope="session")
def payloads(fw, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Per flash size: the full image a user would wrongly send, the app, a truncated app."""
    src = fw("OTA-20250415-v1.25.0").read_bytes()
    out: dict[str, dict[str, Path]] = {}
    for size, args in (("4MB", []), ("16MB", ["-f", "16M", "--resize", "vfs=0"])):
        folder = tmp_path_factory.mktemp(f"payloads-{size}")
        full = images.convert(src, args) if args else src
        app = images.convert(full, ["-x"])
        files = {"full": full, "app": app, "truncated": app[: len(app) // 2]}
        out[size] = {}
        for name, data in files.items():
            path = folder / f"{name}.bin"
            path.write_bytes(data)
            out[size][name] = path
    return out


@pytest.mark.parametrize("size", ["4MB", "16MB"])
def test_inspect_says_what_each_payload_is_before_anything_is_written(payloads, size) -> None:
    full = inspector.examine(payloads[size]["full"]).to_json()
    assert full["kind"] == "firmware"
    verdict = full["ota_payload"]["verdict"]
    assert "full firmware image (bootloader + partition table + app), not an app image" in verdict
    assert "0x3fff0030" in verdict and "overlaps bootloader data" in verdict
    assert full["flash_size"] == size
    app = inspector.examine(payloads[size]["app"]).to_json()
    assert app["kind"] == "app" and app["ota_payload"]["ok"]
    assert app["app"]["sha256_ok"] and app["app"]["checksum_ok"]
    cut = inspector.examine(payloads[size]["truncated"]).to_json()
    assert not cut["ota_payload"]["ok"]
    assert "cut short" in " ".join(cut["app"]["problems"])


@getattr(pytest.mark, "16mb")
def test_users_library_from_file_reproduces_the_report(
    qemu, fw, build_image, payloads, tmp_path
) -> None:
    """The reporter's flow: the full image as /fw.bin in the vfs, `ota.update.from_file()`."""
    lib = Path(__file__).parent.parent / "scenarios" / "files" / "device_lib"
    full = payloads["16MB"]["full"]
    image = build_image(fw("OTA-20250415-v1.25.0"), "16MB",
                        vfs_files=((lib, "/lib"), (full, "/fw.bin")))  # fmt: skip
    with device.boot(
        image, BootOptions(policy.for_image(image, alone=True), qemu=qemu, artifacts=tmp_path)
    ) as dev:
        dev.wait_prompt(30)
        command = "import ota.update\nota.update.from_file('/fw.bin', reboot=True)"
        report = ota.run_library(dev, full, ota.Library(command))
    assert "SHA verify passed" in report.output
    assert "OTA complete: 1491184 bytes written to ota_1" in report.output
    assert report.rebooted
    assert report.bootloader_lines[0].endswith("invalid: overlaps bootloader data")
    assert NOT_BOOTABLE in report.bootloader_lines[1]
    assert report.booted == "ota_0"
    assert report.after.states()[1] == "PENDING_VERIFY"


@getattr(pytest.mark, "4mb")
def test_a_watchdog_reset_in_a_library_update_is_named_not_taken_for_its_reboot(
    qemu, fw, build_image, payloads, tmp_path
) -> None:
    """A step that expects a reboot and sees a watchdog reset raises WatchdogReset, which
    the retry policy reruns; only a software reset is the reboot the library asked for."""
    image = build_image(fw("OTA-20250415-v1.25.0"), "4MB")
    with device.boot(
        image, BootOptions(policy.for_image(image, watchdogs=True), qemu=qemu, artifacts=tmp_path)
    ) as dev:
        dev.wait_prompt(30)
        # TG1 is armed; with the watchdogs on, TG0's task watchdog may come first on a busy host
        with pytest.raises(WatchdogReset, match=r"TG[01]WDT_SYS_RESET.*not the reset the step"):
            ota.run_library(dev, payloads["4MB"]["app"], ota.Library(ARM_TG1_WDT), timeout=60)
