"""The emulated board as a serial port for the user's own tools: mpremote and esptool.

`harness boot --pty` runs as a user would start it; the clients are the real ones from
PyPI (mpremote, esptool), talking to the pty and to the RFC2217 port. esptool 5's new
flasher stub does not start under this project's QEMU 8.0 build (docs: known behaviour),
so esptool runs with ESPTOOL_STUB_VERSION=1 (its legacy stub), as the `--pty` banner and
`run` steps say; its resets are its defaults.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.emulator.qemu import running_qemus
from harness.flash import images
from harness.scenario import format as scenario
from harness.scenario import plan, runner

BIN = Path(sys.executable).parent
MB4 = getattr(pytest.mark, "4mb")
ESPTOOL_ENV = {**os.environ, "ESPTOOL_STUB_VERSION": "1"}
OTA_1 = 0x190000  # ota_1 on MicroPython's 4MB OTA table
RUNNING = "import esp32; print(esp32.Partition(esp32.Partition.RUNNING).info()[4])"


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: str
    rfc2217: str
    esptool: str  # the esptool line the banner prints
    folder: Path

    def stop(self, sig: int = signal.SIGINT) -> str:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=30)
        return out


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install {name})")
    return path


def _serve(image: Path, qemu: Path, folder: Path, preexec: Callable[[], None]) -> Iterator[Served]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "boot", str(image), "--pty",
         "--qemu", str(qemu), "--artifacts", str(folder / "art")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        # the two endpoint lines; anything before them (such as "waiting for the host: ...",
        # when another worker's emulation has the host to itself) is passed over
        lines: list[str] = []
        found: dict[str, str] = {}
        while not {"serial", "rfc2217", "esptool"} <= found.keys():
            line = proc.stdout.readline()
            assert line, f"harness boot --pty ended before serving the board: {lines}"
            lines.append(line)
            key, sep, value = line.strip().partition(": ")
            if sep and key in ("serial", "rfc2217", "esptool"):
                found[key] = value
        yield Served(proc, found["serial"], found["rfc2217"], found["esptool"], folder)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def served(qemu, fw, tmp_path, default_signals) -> Iterator[Served]:
    """The v1.25.0 OTA firmware served as `harness boot FIRMWARE --pty` serves it."""
    yield from _serve(fw("OTA-20250415-v1.25.0"), qemu, tmp_path, default_signals)


@pytest.fixture
def served_with_ota_1(qemu, fw, build_image, tmp_path, default_signals) -> Iterator[Served]:
    """A whole 4MB flash image whose ota_1 already holds the v1.25.0 app: esptool need
    only select it (writing the app itself over RFC2217 is a minute of the host alone,
    which ota-full-image-via-esptool.yaml already spends)."""
    firmware = fw("OTA-20250415-v1.25.0")
    image = bytearray(build_image(firmware, "4MB").read_bytes())
    app = images.convert(firmware.read_bytes(), ["-x"])  # its app
    image[OTA_1 : OTA_1 + len(app)] = app
    flash = tmp_path / "flash.bin"
    flash.write_bytes(image)
    yield from _serve(flash, qemu, tmp_path, default_signals)


def mpremote(port: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("mpremote"), "connect", port, *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def mpremote_after_boot(port: str, *args: str) -> subprocess.CompletedProcess[str]:
    """mpremote right after esptool's hard reset: what it types while the board still boots
    is lost (as on a board), so it tries again, as a user would (it answers in about a
    second once the board is up)."""
    for _ in range(5):
        try:
            return mpremote(port, *args, timeout=8)
        except subprocess.TimeoutExpired:
            continue
    raise AssertionError("mpremote never reached the REPL after the hard reset")


def esptool(url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("esptool"), "--port", url, *args], capture_output=True,
                          text=True, timeout=timeout, env=ESPTOOL_ENV)  # fmt: skip


@MB4
def test_mpremote_over_the_pty(served: Served, tmp_path: Path) -> None:
    run = mpremote(served.port, "exec", "print(6*7)")
    assert run.returncode == 0 and run.stdout.strip() == "42", run.stderr
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(4096) + bytes(range(256)) * 4)
    back = tmp_path / "back.bin"
    assert mpremote(served.port, "cp", str(blob), ":blob.bin").returncode == 0
    assert mpremote(served.port, "cp", ":blob.bin", str(back)).returncode == 0
    assert back.read_bytes() == blob.read_bytes()
    again = mpremote(served.port, "exec", RUNNING)  # a new client after the last one left
    assert again.returncode == 0 and again.stdout.strip() == "ota_0"
    out = served.stop()
    assert "booted:    ota_0" in out
    assert "otadata:   before [UNDEFINED, UNDEFINED]" in out
    log = next((served.folder / "art").glob("run-*/serial.log")).read_text(errors="replace")
    assert "-- client opened" in log and ">> " in log  # both directions are recorded


@MB4
def test_esptool_with_its_default_resets_flashes_and_the_board_boots_it(
    served_with_ota_1: Served, fw, tmp_path: Path
) -> None:
    """The banner's esptool line as printed; then an otadata that selects ota_1, written
    with esptool's default resets: after its hard reset, ota_1 boots."""
    served = served_with_ota_1
    settings, _, command = served.esptool.partition(" esptool ")
    assert command.startswith(f"--port {served.rfc2217} "), served.esptool
    plain = {k: v for k, v in os.environ.items() if k != "ESPTOOL_STUB_VERSION"}
    chip = subprocess.run(
        [tool("esptool"), *shlex.split(command)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**plain, **dict(kv.split("=", 1) for kv in settings.split())},
    )
    assert chip.returncode == 0, chip.stdout + chip.stderr
    assert "ESP32-D0WDQ6" in chip.stdout and "Hard resetting via RTS pin" in chip.stdout
    otadata = tmp_path / "otadata.bin"
    made = subprocess.run([sys.executable, "-m", "harness", "otadata",
                           str(fw("OTA-20250415-v1.25.0")), "--select", "ota_1",
                           "-o", str(otadata)], capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "write it at 0xd000" in made.stdout
    flashed = esptool(served.rfc2217, "-b", "2000000", "write-flash", "0xd000", str(otadata))
    assert flashed.returncode == 0, flashed.stdout + flashed.stderr
    assert "Hash of data verified." in flashed.stdout
    booted = mpremote_after_boot(served.port, "exec", RUNNING)
    assert booted.returncode == 0 and booted.stdout.strip() == "ota_1", booted.stderr
    out = served.stop()
    assert re.search(r"resets:\s+[4-9]\d* power cycles", out), out  # 2 esptool runs: 4 cycles
    flash = next((served.folder / "art").glob("run-*/flash.bin")).read_bytes()
    written = otadata.read_bytes()
    assert flash[0xD000 : 0xD000 + len(written)] == written  # what esptool wrote


@MB4
def test_ctrl_c_with_a_client_attached_leaves_nothing_behind(served: Served) -> None:
    import serial

    client = serial.Serial(served.port, timeout=1)  # holds the port, as a terminal would
    try:
        client.write(b"\r")
        time.sleep(0.5)
        out = served.stop(signal.SIGINT)
    finally:
        client.close()
    assert served.proc.returncode == 0
    assert "booted:    not asked: a client still has the port (pty)" in out
    assert not running_qemus(str(served.folder))


def test_pty_with_exec_is_one_line(fw) -> None:
    firmware = str(fw("OTA-20250415-v1.25.0"))
    run = subprocess.run([sys.executable, "-m", "harness", "boot", firmware, "--pty", "--exec",
                          "print(1)"], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.startswith("error: --pty serves the board to your own tools")
    assert len(run.stderr.strip().splitlines()) == 1


RUN_STEP = """\
title: t
source: s
matrix: {{flash_size: [4MB], firmware: [ESP32_GENERIC-OTA@v1.25.0]}}
steps:
  - boot: prompt
  - run: {{command: "{command}", timeout: 2}}
  - assert_booted: ota_0
"""


@MB4
@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("no-such-tool --port ${port}", "command not found: no-such-tool"),
        ("sleep 30", "sleep did not finish within 2s and was killed"),
        ("mpremote connect ${port} exec 'print(7*6)'", None),
    ],
    ids=["missing", "hangs", "mpremote"],
)
def test_a_scenario_host_command(qemu, firmware_selector, tmp_path, command, words) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(RUN_STEP.format(command=command))
    cell = plan.cells(scenario.load(path), firmware_selector, plan.RunOptions())[0]
    result = runner.run_cell(cell, runner.Setup(tmp_path / "art", qemu))
    if words is None:
        assert result.status == "passed", result.message
        assert result.booted == "ota_0"  # the harness's own steps go on after the client
        return
    assert result.status == "failed"
    first = result.message.splitlines()[0]
    assert "step 2 `run`" in first and words in first, result.message
    assert result.timeline[1].elapsed_s < 10  # cut at its timeout (waiting for the host aside)
    assert not running_qemus(str(tmp_path))


@pytest.mark.slow
@getattr(pytest.mark, "16mb")
def test_the_report_reproduced_with_mpremote_moving_every_byte(qemu, tmp_path: Path) -> None:
    """About 10 minutes: mpremote cp of 1.5 MB through the REPL, then the library's read."""
    path = Path(__file__).parent / "serial" / "ota-report-via-mpremote.yaml"
    run = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--qemu", str(qemu),
                          "--artifacts", str(tmp_path)], capture_output=True, text=True,
                         timeout=2400)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS ota-report-via-mpremote[16mb-v1.25.0]" in run.stdout
    assert "booted ota_0" in run.stdout
