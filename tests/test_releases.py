"""Today's releases (v1.26 on): no `vfs` line, MicroPython makes the filesystem at boot.

The harness must know that region by the firmware's own rule (checked here against
what the running device reports), bake files into it, and convert images the way
users do on each release.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.emulator import device, ota, policy
from harness.emulator.device import BootOptions
from harness.errors import ImageError
from harness.flash import images
from harness.flash import inspect as inspector
from harness.flash.size import MB, FlashSize
from harness.frontends.inspect import render

MB4, MB16 = getattr(pytest.mark, "4mb"), getattr(pytest.mark, "16mb")
V127 = "ESP32_GENERIC-20251209-v1.27.0.bin"
V125 = "ESP32_GENERIC-OTA-20250415-v1.25.0.bin"
LIB = Path(__file__).parent.parent / "scenarios" / "files" / "device_lib"
COMMAND = "import ota.update\nota.update.from_file('/fw.bin', reboot=True)"
VFS_INFO = (
    "import esp32\n"
    "p = esp32.Partition.find(esp32.Partition.TYPE_DATA, label='vfs')[0]\n"
    "print(p.info()[2], p.info()[3])"
)


def inspect_json(path: Path) -> dict:
    run = subprocess.run([sys.executable, "-m", "harness", "inspect", str(path), "--json"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize(
    ("name", "size", "layout"),
    [
        pytest.param(V127, "4MB", "keep", marks=MB4),
        pytest.param(V127, "16MB", "ota", marks=MB16),
        pytest.param(V125, "16MB", "keep", marks=MB16),
    ],
)
def test_inspect_names_the_filesystem_region_the_device_mounts(
    name, size, layout, qemu, fw, build_image, tmp_path
) -> None:
    """`harness inspect --json` `filesystem` == the `vfs` partition the running firmware lists."""
    image = build_image(fw(name), size, layout=layout)
    fs = inspect_json(image)["filesystem"]
    assert fs["offset"] + fs["size"] == FlashSize.emulated(size).bytes
    assert fs["in_table"] == (name == V125)
    with device.boot(
        image, BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path)
    ) as dev:
        dev.wait_prompt(30)
        offset, length = map(int, dev.repl.exec(VFS_INFO).split())
        assert dev.repl.exec("import os; print('boot.py' in os.listdir('/'))").strip() == "True"
    assert (offset, length) == (fs["offset"], fs["size"])
    log = (dev.run_dir / "serial.log").read_text(errors="replace")
    assert "Performing initial setup" not in log  # the harness formatted it as MicroPython does


def test_firmware_file_of_a_release_without_vfs_line_shows_the_region_it_will_get(fw) -> None:
    rep = inspector.examine(fw(V127))
    assert rep.table is not None and rep.table.fs_partition() is None
    assert rep.filesystem is not None and not rep.filesystem.in_table
    assert (rep.filesystem.offset, rep.filesystem.size) == (0x200000, 0x200000)  # 4MB header
    assert "MicroPython makes it at boot" in render(rep)


def test_conversions_follow_each_release(fw, image_cache: Path) -> None:
    """-f 16M --resize vfs=0 where a vfs line exists, -f 16M alone where none does."""
    old = images.build_image(images.Recipe(fw(V125), FlashSize(16)), image_cache)
    new = images.build_image(images.Recipe(fw(V127), FlashSize(16)), image_cache)
    assert old.conversion.endswith(f"{V125} -f 16M --resize vfs=0")
    assert new.conversion.endswith(f"{V127} -f 16M")
    assert any("no vfs line" in note for note in new.notes)
    assert new.filesystem is not None and new.filesystem.offset + new.filesystem.size == 16 * MB


def test_a_failing_conversion_is_reported_in_the_tools_own_words(fw, image_cache: Path) -> None:
    recipe = images.Recipe(fw(V127), FlashSize(16), resize="ota_1=1M")
    with pytest.raises(ImageError) as info:
        images.build(recipe, image_cache)
    message = str(info.value)
    assert message.startswith(f"mp-image-tool-esp32 {V127} -f 16M --resize ota_1=1M failed: ")
    assert message.endswith("PartitionError: Partition 'ota_1' not found.")


@pytest.mark.parametrize("name", [V125, V127])
def test_an_update_that_cannot_fit_the_filesystem_is_one_line_before_booting(
    fw, image_cache: Path, tmp_path: Path, name: str
) -> None:
    """The reporter's 1.5-1.8 MB update does not fit a 4MB image's filesystem."""
    payload = tmp_path / "fw.bin"
    payload.write_bytes(fw(name).read_bytes())
    recipe = images.Recipe(fw(name), FlashSize(4), layout="ota",
                           vfs_files=((LIB, "/lib"), (payload, "/fw.bin")))  # fmt: skip
    with pytest.raises(ImageError) as info:
        images.build(recipe, image_cache)
    message = str(info.value)
    assert "\n" not in message
    assert "/fw.bin (1." in message and "do not fit the" in message
    assert "KB filesystem of this 4MB" in message and "use a 16MB image" in message


@pytest.mark.slow
@MB16
def test_users_library_reproduces_the_report_on_todays_release(
    qemu, fw, build_image, tmp_path
) -> None:
    """The reporter's flow on 16MB of v1.27.0 (OTA layout, the filesystem made at boot):
    the full image at /fw.bin, `ota.update.from_file()`. v1.25.0's is tests/test_ota.py,
    in `make test`; this one (some 100 s with the host to itself, reading 1.5 MB through
    littlefs) runs with the long runs (`make test-reliability`)."""
    full = tmp_path / "firmware-16M.bin"
    full.write_bytes(images.convert(fw(V127).read_bytes(), ["-f", "16M"]))
    image = build_image(fw(V127), "16MB", layout="ota",
                        vfs_files=((LIB, "/lib"), (full, "/fw.bin")))  # fmt: skip
    with device.boot(
        image, BootOptions(policy.for_image(image, alone=True), qemu=qemu, artifacts=tmp_path)
    ) as dev:
        dev.wait_prompt(30)
        report = ota.run_library(dev, full, ota.Library(COMMAND))
    assert "SHA verify passed" in report.output
    assert report.rebooted
    assert report.bootloader_lines[0].endswith("invalid: overlaps bootloader data")
    assert report.bootloader_lines[1].endswith("boot: OTA app partition slot 1 is not bootable")
    assert report.booted == "ota_0"
    assert report.after is not None and report.after.states()[1] == "PENDING_VERIFY"
