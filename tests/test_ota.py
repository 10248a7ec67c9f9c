"""OTA inside QEMU on 4MB and 16MB: the reported failure, good updates, rollback, truncation.

The 16MB image is the reporter's: `mp-image-tool-esp32 firmware.bin -f 16M --resize vfs=0`;
the "full image" payload is that same command's output, the app payload its `-x` extract.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import device, images, inspect, ota

OVERLAPS = "esp_image: Segment 0 0x3fff0030-0x3fff"
NOT_BOOTABLE = "boot: OTA app partition slot 1 is not bootable"
SIZES = [pytest.param("4MB", marks=getattr(pytest.mark, "4mb")),
         pytest.param("16MB", marks=getattr(pytest.mark, "16mb"))]  # fmt: skip


@pytest.fixture(scope="session")
def payloads(fw, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Per flash size: the full image a user would wrongly send, the app, a truncated app."""
    src = fw("OTA-20250415-v1.25.0").read_bytes()
    out: dict[str, dict[str, Path]] = {}
    for size, args in (("4MB", []), ("16MB", ["-f", "16M", "--resize", "vfs=0"])):
        folder = tmp_path_factory.mktemp(f"payloads-{size}")
        full = images.convert(src, args, folder) if args else src
        app = images.convert(full, ["-x"], folder)
        files = {"full": full, "app": app, "truncated": app[: len(app) // 2]}
        out[size] = {}
        for name, data in files.items():
            path = folder / f"{name}.bin"
            path.write_bytes(data)
            out[size][name] = path
    return out


@pytest.fixture
def dev(request, qemu, fw, build_image, tmp_path):
    image = build_image(fw("OTA-20250415-v1.25.0"), request.param)
    with device.boot(image, qemu=qemu, artifacts=tmp_path, data_channel=True) as d:
        d.repl.wait_prompt(30)
        yield d


@pytest.mark.parametrize("dev", SIZES, indirect=True)
def test_full_image_into_slot_is_rejected_by_the_bootloader(dev, payloads, request) -> None:
    size = request.node.callspec.params["dev"]
    report = ota.update(dev, payloads[size]["full"])
    assert report.payload_kind == "firmware"
    assert report.target == "ota_1"
    assert report.delivered_sha_ok and report.slot_matches_payload  # "SHA check passed"
    assert report.set_boot_error is None  # set_boot() accepts it, as the report says
    assert report.rebooted
    assert report.bootloader_lines[0].startswith("E (")
    assert OVERLAPS in report.bootloader_lines[0]
    assert report.bootloader_lines[0].endswith("invalid: overlaps bootloader data")
    assert NOT_BOOTABLE in report.bootloader_lines[1]
    assert report.booted == "ota_0"
    assert report.after.states()[1] == "PENDING_VERIFY"  # still names ota_1, not valid
    assert report.after.boot["slot"] == "ota_0"
    booted, _ = ota.reset(dev)  # and on the next reset the bootloader gives up on it
    assert booted == "ota_0"
    assert ota.FlashState.read(dev.flash).states()[1] == "ABORTED"


@pytest.mark.parametrize("dev", SIZES, indirect=True)
def test_app_image_with_confirmation_stays_on_ota_1(dev, payloads, request) -> None:
    size = request.node.callspec.params["dev"]
    report = ota.update(dev, payloads[size]["app"], confirm=True)
    assert report.payload_kind == "app"
    assert report.bootloader_lines == []  # a good OTA boot prints nothing
    assert (report.booted, report.confirmed) == ("ota_1", True)
    assert report.after.states() == ["VALID", "VALID"]
    booted, lines = ota.reset(dev)
    assert (booted, lines) == ("ota_1", [])


@pytest.mark.parametrize("dev", SIZES, indirect=True)
def test_app_image_without_confirmation_rolls_back_on_reset(dev, payloads, request) -> None:
    size = request.node.callspec.params["dev"]
    report = ota.update(dev, payloads[size]["app"], confirm=False)
    assert report.booted == "ota_1"
    assert report.after.states()[1] == "PENDING_VERIFY"
    assert "rolls back to ota_0" in report.after.boot["reason"]
    booted, lines = ota.reset(dev)
    assert booted == "ota_0"
    assert lines == []  # the bootloader says nothing about the rollback...
    assert ota.FlashState.read(dev.flash).states()[1] == "ABORTED"  # ...otadata does


@pytest.mark.parametrize("dev", SIZES, indirect=True)
def test_truncated_app_is_refused_by_set_boot(dev, payloads, request) -> None:
    size = request.node.callspec.params["dev"]
    report = ota.update(dev, payloads[size]["truncated"])
    assert report.slot_matches_payload
    assert report.set_boot_error == "OSError: (-5379, 'ESP_ERR_OTA_VALIDATE_FAILED')"
    assert not report.rebooted
    assert report.booted == "ota_0"
    assert report.after.states() == report.before.states()


@pytest.mark.parametrize("size", ["4MB", "16MB"])
def test_inspect_says_what_each_payload_is_before_anything_is_written(payloads, size) -> None:
    full = inspect.report(payloads[size]["full"])
    assert full["kind"] == "firmware"
    verdict = full["ota_payload"]["verdict"]
    assert "full firmware image (bootloader + partition table + app), not an app image" in verdict
    assert "0x3fff0030" in verdict and "overlaps bootloader data" in verdict
    assert full["flash_size"] == size
    app = inspect.report(payloads[size]["app"])
    assert app["kind"] == "app" and app["ota_payload"]["ok"]
    assert app["app"]["sha256_ok"] and app["app"]["checksum_ok"]
    cut = inspect.report(payloads[size]["truncated"])
    assert not cut["ota_payload"]["ok"]
    assert "cut short" in " ".join(cut["app"]["problems"])


@getattr(pytest.mark, "16mb")
def test_users_library_from_file_reproduces_the_report(
    qemu, fw, build_image, payloads, tmp_path
) -> None:
    """The reporter's flow: the full image as /fw.bin in the vfs, `ota.update.from_file()`."""
    lib = Path(__file__).parent / "device_lib"
    full = payloads["16MB"]["full"]
    image = build_image(fw("OTA-20250415-v1.25.0"), "16MB",
                        vfs_files=((lib, "/lib"), (full, "/fw.bin")))  # fmt: skip
    with device.boot(image, qemu=qemu, artifacts=tmp_path) as dev:
        dev.repl.wait_prompt(30)
        report = ota.run_library(
            dev, full, "import ota.update\nota.update.from_file('/fw.bin', reboot=True)"
        )
    assert "SHA verify passed" in report.output
    assert "OTA complete: 1491184 bytes written to ota_1" in report.output
    assert report.rebooted
    assert report.bootloader_lines[0].endswith("invalid: overlaps bootloader data")
    assert NOT_BOOTABLE in report.bootloader_lines[1]
    assert report.booted == "ota_0"
    assert report.after.states()[1] == "PENDING_VERIFY"
