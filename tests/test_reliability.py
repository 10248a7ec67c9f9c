"""What CI machines do to the harness: kills, repetition, a dying QEMU, host load, bad input.

The long loops are marked `slow` (`make test-reliability` runs them; `make test` skips
them). The bad-input table and the QEMU-killed case are quick and always run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.emulator.ota import OtaReport
from harness.emulator.qemu import running_qemus
from harness.flash.size import FlashSize
from harness.scenario import format as scenario
from harness.scenario import plan, runner
from harness.scenario.results import CellResult

ROOT = Path(__file__).parent.parent
REPORT = ROOT / "scenarios" / "ota-full-image-into-slot.yaml"
OTA_FW = "OTA-20250415-v1.25.0"


def harness(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    cmd = [sys.executable, "-m", "harness", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, **kw)


def one_line_error(run: subprocess.CompletedProcess, *words: str) -> str:
    assert run.returncode not in (0, None), run.stdout
    assert "Traceback" not in run.stderr, run.stderr
    first = run.stderr.splitlines()[0]
    assert first.startswith("error: "), run.stderr
    for word in words:
        assert word in first, first
    return first


# -- bad input: one line, non-zero exit, nothing written ---------------------------------


def chip_image(firmware: Path, chip_id: int, folder: Path) -> Path:
    data = bytearray(firmware.read_bytes())
    data[12:14] = chip_id.to_bytes(2, "little")  # the bootloader header's chip id
    path = folder / f"chip-{chip_id}.bin"
    path.write_bytes(bytes(data))
    return path


def fake_qemu(folder: Path, machines: str) -> Path:
    """A qemu-system-xtensa like Debian's: runs, but without the esp32 machine."""
    path = folder / "qemu-system-xtensa"
    path.write_text(f"#!/bin/sh\necho 'Supported machines are:'\necho '{machines}'\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", ["no such file"]),
        ("empty", ["empty"]),
        ("text", ["not an ESP32 firmware image"]),
        ("esp32s3", ["built for esp32s3", "esp32 image"]),
        ("esp32c3", ["built for esp32c3"]),
        ("truncated", ["is cut short", "no partition table at 0x8000"]),
        ("size3", ["3MB cannot be emulated"]),
        ("size32", ["32MB cannot be emulated"]),
        ("qemu-not-executable", ["is not an executable file"]),
        ("qemu-without-esp32", ["has no esp32 machine"]),
    ],
)
def test_bad_input_to_boot(case: str, words: list[str], fw, tmp_path: Path) -> None:
    firmware = fw(OTA_FW)
    args = {"size3": ["--flash-size", "3MB"], "size32": ["--flash-size", "32MB"]}.get(case, [])
    path = firmware
    if case == "missing":
        path = tmp_path / "nope.bin"
    elif case == "empty":
        path = tmp_path / "empty.bin"
        path.write_bytes(b"")
    elif case == "text":
        path = tmp_path / "notes.bin"
        path.write_text("flash me\n")
    elif case in ("esp32s3", "esp32c3"):
        path = chip_image(firmware, 9 if case == "esp32s3" else 5, tmp_path)
    elif case == "truncated":
        path = tmp_path / "cut.bin"
        path.write_bytes(firmware.read_bytes()[:0x5000])
    elif case == "qemu-not-executable":
        bad = tmp_path / "qemu"
        bad.write_text("not a program")
        args = ["--qemu", str(bad)]
    elif case == "qemu-without-esp32":
        args = ["--qemu", str(fake_qemu(tmp_path, "none   empty machine\nsim    sim machine"))]
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    run = harness("boot", str(path), *args, "--exec", "print(1)", cwd=tmp_path)
    one_line_error(run, *words)
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_read_only_firmware_boots_and_stays_untouched(qemu, fw, tmp_path: Path) -> None:
    path = tmp_path / "ro.bin"
    shutil.copyfile(fw(OTA_FW), path)
    path.chmod(stat.S_IRUSR | stat.S_IRGRP)
    before, mode = path.read_bytes(), path.stat().st_mode
    run = harness("boot", str(path), "--qemu", str(qemu), "--exec", "print(6 * 7)")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "42"
    assert path.read_bytes() == before and path.stat().st_mode == mode


def test_image_build_onto_a_read_only_output_is_one_line(fw, tmp_path: Path) -> None:
    out = tmp_path / "ro" / "image.bin"
    out.parent.mkdir()
    out.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(out.parent, os.W_OK):
        pytest.skip("running as root: a read-only folder is still writable")
    run = harness("image", "build", str(fw(OTA_FW)), "-o", str(out))
    one_line_error(run, str(out))


def test_full_artifacts_disk_is_one_line(qemu, fw, tmp_path: Path) -> None:
    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        run = harness("boot", str(fw(OTA_FW)), "--qemu", str(qemu), "--artifacts", str(disk),
                      "--exec", "print(1)")  # fmt: skip
        one_line_error(run, "No space left on device")
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert not running_qemus(str(disk))


# -- QEMU dying in the middle of a scenario ---------------------------------------------


def test_qemu_killed_during_a_scenario_step_fails_at_once(
    qemu, firmware_selector, tmp_path
) -> None:
    device_write = tmp_path / "report.yaml"  # the device writes: a step that lasts
    device_write.write_text(REPORT.read_text().replace("method: staged", "method: harness"))
    cell = plan.cells(scenario.load(device_write), firmware_selector,
                      plan.RunOptions(flash_sizes=(FlashSize(4),)))[0]  # fmt: skip
    in_ota = threading.Event()

    def progress(_cell: plan.CellPlan, _index: int, kind: str) -> None:
        if kind == "ota":
            in_ota.set()

    box: dict[str, object] = {}
    setup = runner.Setup(tmp_path, qemu)
    thread = threading.Thread(
        target=lambda: box.update(result=runner.run_cell(cell, setup, progress))
    )
    thread.start()
    assert in_ota.wait(60)
    time.sleep(2)
    pids = running_qemus(str(tmp_path))
    assert pids
    for pid, _cmdline in pids:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    thread.join(60)
    result = box["result"]
    assert isinstance(result, runner.CellResult)
    assert time.monotonic() - killed < 10  # at once, not a 300 s timeout
    assert result.status == "failed"
    assert "step 4 `ota`" in result.message
    assert "QEMU exited (signal 9) during" in result.message


# -- slow loops: make test-reliability ---------------------------------------------------

KILLS_PER_CASE = 20


def _leftovers(tmp: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name not in keep)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["boot", "ota"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=str)
def test_killing_the_harness_leaves_no_qemu_and_no_temp_folder(
    qemu, fw, tmp_path: Path, image_cache: Path, sig: int, phase: str, default_signals
) -> None:
    rng = random.Random(f"{sig}-{phase}")  # random points, the same on every run
    firmware = fw(OTA_FW)
    for i in range(KILLS_PER_CASE):
        tmp = tmp_path / f"kill-{i}"
        tmp.mkdir()
        art = tmp / "artifacts"
        if phase == "boot":
            cmd = ["boot", str(firmware), "--exec", "import time; time.sleep(60)"]
            delay = rng.uniform(0.2, 2.5)
        else:
            cmd = ["run", str(REPORT), "--flash-size", "4MB", "--firmware", str(firmware),
                   "--artifacts", str(art)]  # fmt: skip
            delay = rng.uniform(3.0, 15.0)
        env = {**os.environ, "TMPDIR": str(tmp), "HARNESS_CACHE": str(image_cache)}
        proc = subprocess.Popen([sys.executable, "-m", "harness", *cmd, "--qemu", str(qemu)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=default_signals)  # fmt: skip
        time.sleep(delay)
        proc.send_signal(sig)
        proc.wait(30)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
            running_qemus(str(tmp)) or _leftovers(tmp, {"artifacts"})
        ):
            time.sleep(0.1)
        assert not running_qemus(str(tmp)), f"kill {i} ({delay:.1f}s): QEMU left running"
        assert not _leftovers(tmp, {"artifacts"}), f"kill {i} ({delay:.1f}s): temp left"


def _outcome(result: runner.CellResult) -> tuple[str, str | None, tuple[str, ...]]:
    ota = result.detail("ota", OtaReport)
    lines = tuple(line.split(") ", 1)[-1] for line in (ota.bootloader_lines if ota else []))
    return result.status, result.booted, lines


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_the_starting_report_gives_the_same_outcome_20_times(
    qemu, firmware_selector, tmp_path: Path, workers: int
) -> None:
    """With the documented retry policy (--retries 1) that make uses; retries are counted."""
    options = plan.RunOptions(flash_sizes=(FlashSize(16),), retries=1)
    cell = plan.cells(scenario.load(REPORT), firmware_selector, options)[0]

    def once(i: int) -> CellResult:
        return runner.run_cell(cell, runner.Setup(tmp_path / f"run-{i}", qemu))

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(once, range(20)))
    outcomes = {_outcome(r) for r in results}
    retried = [r.name for r in results if len(r.attempts) > 1]
    print(f"{workers} worker(s): {len(results)} runs, outcomes {outcomes}, retried {len(retried)}")
    assert outcomes == {(
        "passed", "ota_0",
        ("esp_image: Segment 0 0x3fff0030-0x3fff134c invalid: overlaps bootloader data",
         "boot: OTA app partition slot 1 is not bootable"),
    )}  # fmt: skip


@pytest.mark.slow
def test_boot_under_host_load_is_reported_as_host_load_not_firmware(qemu, fw, tmp_path) -> None:
    """Busy loops on every core while v1.20.0 (the most watchdog-sensitive build) boots."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(2 * (os.cpu_count() or 2))]  # fmt: skip
    try:
        time.sleep(3)  # let the load average climb
        outcomes = []
        for _ in range(3):
            run = harness("boot", str(fw("v1.20.0")), "--qemu", str(qemu), "--exec", "print(1)")
            if run.returncode == 0:
                outcomes.append("booted")
                continue
            first = run.stderr.splitlines()[0]
            # watchdogs on: a boot loop of watchdog resets; off (the default): a stall
            assert "boot loop" in first or "stalled" in first, run.stderr
            assert "host load average" in first, run.stderr
            assert "likely the host, not the firmware" in first, run.stderr
            outcomes.append("boot loop or stall (host load)")
        print(f"under load: {outcomes}")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
