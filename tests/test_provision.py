"""The main job gets what it needs or says, in one line, what is missing; pins are kept.

Firmware comes from the local folder, the user cache or a download, its sha256 checked
every time; the image cache is checked before use; QEMU's own start-up errors reach
the user in QEMU's words. Nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.emulator.qemu import Machine, MachineSetup, running_qemus
from harness.errors import QemuExited
from harness.flash import images
from harness.flash.firmware import sha256_of
from harness.flash.size import FlashSize
from harness.sources.manifest import FirmwareSelector, FirmwareUnavailable

ROOT = Path(__file__).parent.parent
V125 = "ESP32_GENERIC-OTA-20250415-v1.25.0.bin"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def offline_env(tmp_path: Path) -> dict[str, str]:
    """An empty local folder, an empty cache, and micropython.org out of reach."""
    (tmp_path / "empty").mkdir(exist_ok=True)
    return {
        **os.environ,
        "HARNESS_FIRMWARE_DIR": str(tmp_path / "empty"),
        "HARNESS_FIRMWARE_CACHE": str(tmp_path / "cache"),
        "HARNESS_MICROPYTHON_URL": closed_port_url(),
        "HARNESS_FIRMWARE_MIRROR": "",  # no company mirror either (the ci workflow sets one)
    }


def test_main_job_without_firmware_or_network_stops_with_one_line(tmp_path: Path) -> None:
    """`make test-16mb` with an empty FIRMWARE_DIR, no cache and no network: never green."""
    env = offline_env(tmp_path)
    run = subprocess.run(
        ["make", "-s", "test-16mb", f"FIRMWARE_DIR={tmp_path / 'empty'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr  # the harness's one line (make adds its own)
    first = errors[0]
    assert first.startswith("error: firmware ESP32_GENERIC-OTA@v1.25.0 ("), run.stderr
    assert "could not be downloaded" in first and "harness firmware fetch" in first
    assert "FIRMWARE_DIR" in first
    assert "passed" not in run.stdout  # pytest never started


def test_a_file_that_differs_from_its_pin_is_refused(fw, tmp_path: Path) -> None:
    folder = tmp_path / "fw"
    folder.mkdir()
    data = bytearray(fw(V125).read_bytes())
    data[-100] ^= 0xFF
    (folder / V125).write_bytes(data)
    with pytest.raises(FirmwareUnavailable) as info:
        FirmwareSelector(local=folder, download=False).entry("ESP32_GENERIC-OTA@v1.25.0")
    message = str(info.value)
    assert "differs from its pin in the firmware manifest" in message and "refused" in message


def test_local_folder_then_cache_then_nothing(fw, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copyfile(fw(V125), cache / V125)
    chooser = FirmwareSelector(local=tmp_path / "none", cache=cache, download=False)
    found = chooser.entry("ESP32_GENERIC-OTA@v1.25.0")
    assert (found.path, found.origin, found.pinned) == (cache / V125, "cache", True)
    with pytest.raises(FirmwareUnavailable, match="downloads are off"):
        chooser.entry("ESP32_GENERIC@v1.23.0")
    with pytest.raises(FirmwareUnavailable, match="not in the firmware manifest"):
        chooser.entry("ESP32_GENERIC@v9.9.9")


def test_an_unpinned_release_is_checked_against_its_first_download(fw, tmp_path: Path) -> None:
    """Trust on first use: the recorded sha256 guards the file, and it is reported unpinned."""
    cache = tmp_path / "cache"
    cache.mkdir()
    name = "ESP32_GENERIC-OTA-20260415-v1.28.0.bin"
    shutil.copyfile(fw(V125), cache / name)
    digest = sha256_of(cache / name)
    (cache / "checksums.json").write_text(f'{{"{name}": "{digest}"}}\n')
    chooser = FirmwareSelector(cache=cache, download=False)
    found = chooser.entry("ESP32_GENERIC-OTA@v1.28.0")
    assert found.path == cache / name and not found.pinned
    (cache / name).write_bytes(b"\xe9" + (cache / name).read_bytes()[1:-1])
    with pytest.raises(FirmwareUnavailable, match="differs from its first download"):
        chooser.entry("ESP32_GENERIC-OTA@v1.28.0")


def test_a_damaged_cache_entry_is_rebuilt_not_booted(fw, tmp_path: Path) -> None:
    recipe = images.Recipe(fw(V125), FlashSize(4))
    built = images.build_image(recipe, tmp_path)
    good = built.path.read_bytes()
    with built.path.open("r+b") as f:  # a full disk cut it short
        f.truncate(len(good) // 2)
    assert images.build(recipe, tmp_path).read_bytes() == good
    damaged = bytearray(good)
    damaged[0x9000] ^= 0xFF  # someone changed it by hand
    built.path.write_bytes(damaged)
    assert images.build(recipe, tmp_path).read_bytes() == good
    built.path.with_suffix(".json").write_text("{not json")
    assert images.build_image(recipe, tmp_path).sha256 == built.sha256


def test_qemu_refusing_a_flash_size_is_one_line_in_its_own_words(qemu, tmp_path: Path) -> None:
    flash = tmp_path / "flash.bin"
    flash.write_bytes(b"\xff" * (3 << 20))  # bypasses the harness's own size check
    with (
        pytest.raises(QemuExited) as info,
        Machine(
            MachineSetup(qemu, psram=False, watchdogs=False, data_channel=False), flash, tmp_path
        ) as machine,
    ):
        machine.start()
    message = str(info.value)
    assert message.startswith("QEMU exited (exit code 1) during startup: ")
    assert "flash" in message.lower() and "\n" not in message
    assert not running_qemus(str(tmp_path))


def test_the_nightly_releases_come_from_the_manifest_and_reach_the_newest() -> None:
    run = subprocess.run([sys.executable, "-m", "harness", "firmware", "list", "--nightly",
                          "--json"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    releases = json.loads(run.stdout)
    assert releases[-1] == "ESP32_GENERIC-OTA@v1.29.0"
    assert "ESP32_GENERIC-OTA@v1.26.0" in releases and "ESP32_GENERIC-OTA@v1.25.0" in releases
