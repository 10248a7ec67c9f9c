"""`harness repro`: the starting report reproduced from the firmware file and the update file."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from harness.flash import images
from harness.flash.size import FlashSize
from harness.frontends import repro
from harness.scenario import format as scenario

SIZES = [pytest.param("4MB", marks=getattr(pytest.mark, "4mb")),
         pytest.param("16MB", marks=getattr(pytest.mark, "16mb"))]  # fmt: skip


def reporters_update(firmware: Path, size: str, folder: Path) -> Path:
    """What the reporter sent: their own mp-image-tool-esp32 conversion, a full image."""
    args = ["-f", "16M", "--resize", "vfs=0"] if size == "16MB" else []
    data = firmware.read_bytes()
    update = folder / "firmware-16M.bin"
    update.write_bytes(images.convert(data, args) if args else data)
    return update


@pytest.mark.parametrize("size", SIZES)
def test_repro_reproduces_the_report_and_saves_a_passing_scenario(
    qemu, fw, tmp_path: Path, size: str
) -> None:
    firmware = fw("OTA-20250415-v1.25.0")
    update = reporters_update(firmware, size, tmp_path)
    before = update.read_bytes()
    save = tmp_path / "scenarios" / "reported-full-image.yaml"
    run = subprocess.run(
        [sys.executable, "-m", "harness", "repro", "--firmware", str(firmware),
         "--update", str(update), "--flash-size", size, "--expect", "overlaps bootloader data",
         "--save", str(save), "--artifacts", str(tmp_path / "art"), "--qemu", str(qemu)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "reproduced: yes, serial output showed 'overlaps bootloader data'" in out
    assert "esp_image: Segment 0 0x3fff0030-0x3fff134c invalid: overlaps bootloader data" in out
    assert "boot: OTA app partition slot 1 is not bootable" in out
    assert "booted:    ota_0 (update written to ota_1, set_boot: ok)" in out
    assert "fix:       this is a full flash image" in out
    assert "`mp-image-tool-esp32 firmware-16M.bin -x`" in out
    page = tmp_path / "art" / "report.html"
    assert f"report:    {page}" in out  # the same page as a run's, for this one cell
    assert 'data-name="reported-full-image[' in page.read_text()
    assert update.read_bytes() == before
    saved = scenario.load(save)
    assert [next(iter(s.model_fields_set)) for s in saved.steps] == [
        "boot", "ota", "expect", "assert_booted"
    ]  # fmt: skip
    if size != "16MB":
        return
    # the saved file is a regression test as it stands: run it under pytest
    again = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(save),
         "--qemu", str(qemu), "--artifacts", str(tmp_path / "art2")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 passed" in again.stdout
    assert f"report: {tmp_path / 'art2' / 'report.html'}" in again.stdout  # the plugin's page


def test_repro_refuses_to_overwrite_and_names_missing_files(fw, tmp_path: Path) -> None:
    exists = tmp_path / "taken.yaml"
    exists.write_text("keep me\n")
    firmware = fw("OTA-20250415-v1.25.0")
    for extra, words in [
        (["--update", str(tmp_path / "missing.bin")], "no such file"),
        (["--update", str(firmware), "--save", str(exists)], "never overwritten"),
    ]:
        run = subprocess.run([sys.executable, "-m", "harness", "repro", "--firmware",
                              str(firmware), *extra], capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 2, run.stderr
        assert words in run.stderr.splitlines()[0]
        assert "Traceback" not in run.stderr
    assert exists.read_text() == "keep me\n"


@getattr(pytest.mark, "16mb")
def test_repro_on_a_release_without_vfs_line(qemu, fw, tmp_path: Path) -> None:
    """v1.27.0 (factory layout, no vfs line): OTA slots made as its OTA variant has them;
    the reporter's update is `-f 16M` alone."""
    firmware = fw("v1.27.0")
    update = tmp_path / "firmware-16M.bin"
    update.write_bytes(images.convert(firmware.read_bytes(), ["-f", "16M"]))
    run = subprocess.run(
        [sys.executable, "-m", "harness", "repro", "--firmware", str(firmware),
         "--update", str(update), "--flash-size", "16MB", "--expect", "overlaps bootloader data",
         "--artifacts", str(tmp_path / "art"), "--qemu", str(qemu)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "reproduced: yes, serial output showed 'overlaps bootloader data'" in run.stdout
    assert "boot: OTA app partition slot 1 is not bootable" in run.stdout
    assert "booted:    ota_0 (update written to ota_1, set_boot: ok)" in run.stdout
    assert "--table nvs=0x4000,otadata=0x2000,phy_init=0x1000,ota_0=" in run.stdout


@getattr(pytest.mark, "4mb")
def test_repro_exit_codes_tell_reproduced_not_reproduced_and_could_not_run(
    qemu, fw, tmp_path: Path
) -> None:
    firmware = fw("OTA-20250415-v1.25.0")
    app = tmp_path / "app.bin"
    app.write_bytes(images.convert(firmware.read_bytes(), ["-x"]))
    base = [sys.executable, "-m", "harness", "repro", "--firmware", str(firmware),
            "--qemu", str(qemu), "--artifacts", str(tmp_path / "art")]  # fmt: skip
    good = subprocess.run([*base, "--update", str(app), "--expect", "overlaps bootloader data"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert good.returncode == 1, good.stdout + good.stderr  # a good update: not reproduced
    assert "reproduced: no, serial output never showed 'overlaps bootloader data'" in good.stdout
    lib = Path(__file__).parent.parent / "scenarios" / "files" / "device_lib"
    cannot = subprocess.run(
        [*base, "--update", str(firmware), "--device-lib", str(lib),
         "--command", "import ota.update; ota.update.from_file('/fw.bin')"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cannot.returncode == 2, cannot.stdout + cannot.stderr  # could not run
    assert cannot.stderr.startswith("error: ") and "do not fit" in cannot.stderr.splitlines()[0]
    assert "Traceback" not in cannot.stderr


def test_repro_stages_the_update_unless_told_to_write_it_on_the_device(fw, tmp_path) -> None:
    """Staged by default (the bootloader judges the same bytes: tests/test_staged.py);
    `--method harness` has the device write it; a library command is always on the device."""
    firmware = fw("OTA-20250415-v1.25.0")
    base = repro.Request(firmware, firmware, FlashSize(4))

    def method(req: repro.Request) -> str:
        return repro.scenario_data(req, tmp_path)["steps"][1]["ota"]["method"]

    assert method(base) == "staged"
    assert method(dataclasses.replace(base, method="harness")) == "harness"
    assert method(dataclasses.replace(base, command="import ota.update", method="harness")) == (
        "library"
    )
