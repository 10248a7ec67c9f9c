"""No QEMU outlives the harness, whatever ends the run (checked in the process table)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from harness.emulator import device, policy
from harness.emulator.device import BootOptions
from harness.emulator.qemu import running_qemus
from harness.errors import DeviceTimeout, QemuExited


def _gone(marker: str, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while running_qemus(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def image(fw, build_image):
    return build_image(fw("OTA-20250415-v1.25.0"), "4MB")


def test_timeout_leaves_no_qemu(qemu, image, tmp_path) -> None:
    with (
        pytest.raises(DeviceTimeout, match="timed out after 1s") as info,
        device.boot(
            image, BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path)
        ) as dev,
    ):
        assert running_qemus(str(tmp_path)), "QEMU should be running inside the block"
        dev.console.expect("this never appears", timeout=1)
    assert "serial log:" in str(info.value)
    assert _gone(str(tmp_path), within=0)


def test_exception_mid_boot_leaves_no_qemu(qemu, image, tmp_path) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        device.boot(image, BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path)),
    ):
        assert running_qemus(str(tmp_path))
        raise RuntimeError("boom")  # before the prompt
    assert _gone(str(tmp_path), within=0)


def test_qemu_killed_mid_run_fails_at_once_naming_the_signal(qemu, image, tmp_path) -> None:
    with device.boot(
        image, BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path)
    ) as dev:
        dev.wait_prompt(30)
        os.kill(dev.board.machine.proc.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(QemuExited, match=r"QEMU exited \(signal 9\) during"):
            dev.repl.exec("import time; time.sleep(20)", timeout=30)
        assert time.monotonic() - start < 5


def _cli_boot(image, tmp_path, default_signals) -> subprocess.Popen[bytes]:
    code = "import time\nwhile True: time.sleep(1)"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "boot",
            str(image),
            "--exec",
            code,
            "--artifacts",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=default_signals,
    )


def _wait_for_qemu(proc: subprocess.Popen[bytes], marker: str, within: float = 300.0) -> None:
    """Wait for the CLI's QEMU. Generous: the CLI may wait for the host lock while
    another worker's emulation has the host to itself (harness.emulator.hostlock)."""
    deadline = time.monotonic() + within
    while not running_qemus(marker):
        if proc.poll() is not None:
            pytest.fail(
                f"the CLI exited ({proc.returncode}) before its QEMU started: "
                f"{proc.stderr.read().decode(errors='replace') if proc.stderr else ''}"
            )
        assert time.monotonic() < deadline, "QEMU never started"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
@pytest.mark.parametrize("when", ["boot", "exec"])
def test_killing_the_cli_kills_its_qemu(sig, when, qemu, image, tmp_path, default_signals) -> None:
    proc = _cli_boot(image, tmp_path, default_signals)
    try:
        _wait_for_qemu(proc, str(tmp_path))
        time.sleep(0.2 if when == "boot" else 3.0)  # mid-boot, or inside the running --exec
        proc.send_signal(sig)
        proc.wait(timeout=10)
        assert _gone(str(tmp_path)), running_qemus(str(tmp_path))
        if sig != signal.SIGKILL:
            assert proc.returncode != 0
            assert b"Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
