"""Network as a capability: which QEMU emulates Wi-Fi, which releases it serves, and a
board that downloads from the host's server (the boots need the Wi-Fi QEMU, built by
`harness qemu install --wifi`; they skip with the reason where it is absent)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import chips
from harness.emulator import launch
from harness.emulator import qemu as machine
from harness.errors import QemuNotFound
from harness.flash import recipes
from harness.flash.firmware import FirmwareFacts
from harness.frontends import repro

WIFI = chips.ESP32.wifi
V122 = "ESP32_GENERIC-OTA-20231227-v1.22.0.bin"
V127 = "ESP32_GENERIC-20251209-v1.27.0.bin"


@pytest.fixture(scope="session")
def wifi_qemu() -> Path:
    """The Wi-Fi QEMU, or a skip that says how to get one."""
    try:
        return machine.find_wifi_qemu()
    except QemuNotFound as exc:
        pytest.skip(f"emulation test skipped: {exc}")


def test_the_profile_serves_esp_idf_5_0_and_says_why_not_in_one_line() -> None:
    assert WIFI is not None and WIFI.serves == ("5.0",)
    assert WIFI.why_not("v1.22.0", "v5.0.4") == ""
    assert WIFI.why_not("v1.27.0", "v5.5.1") == (
        "this QEMU emulates Wi-Fi for ESP-IDF 5.0 builds only; v1.27.0 is 5.5.1"
    )
    assert WIFI.why_not("v1.20.0", None).endswith("v1.20.0 does not say its ESP-IDF")


def test_a_psram_build_on_the_network_runs_without_psram_unless_told(
    firmware_dir: Path,
) -> None:
    """Beside the guest's PSRAM, v1.21.0 SPIRAM's Wi-Fi panics (harness.chips.Wifi)."""
    path = firmware_dir / "ESP32_GENERIC-SPIRAM-20231005-v1.21.0.bin"
    if not path.is_file():
        pytest.skip(f"{path.name} is not in {firmware_dir}")
    search = recipes.search_path(Path.cwd())

    def psram(network: bool, chosen: bool | None = None) -> bool:
        choices = launch.Choices(psram=chosen, network=network)
        return launch.prepare(path, choices, search).policy.psram

    assert psram(network=False) is True and psram(network=True) is False
    assert psram(network=True, chosen=True) is True


@pytest.mark.parametrize(
    ("name", "served"),
    [(V122, True), ("ESP32_GENERIC-SPIRAM-20231005-v1.21.0.bin", True),
     ("ESP32_GENERIC-20240602-v1.23.0.bin", True), ("ESP32_GENERIC-20241025-v1.24.0.bin", False),
     (V127, False), ("ESP32_GENERIC-20230426-v1.20.0.bin", False)],
)  # fmt: skip
def test_releases_served_are_read_from_the_app_description(
    name: str, served: bool, fw: Callable[[str], Path], firmware_dir: Path
) -> None:
    """The ESP-IDF version comes from the app's esp_app_desc_t, not from a file name."""
    path = firmware_dir / name
    if not path.is_file():
        pytest.skip(f"{name} is not in {firmware_dir}")
    facts = FirmwareFacts.read(path)
    assert WIFI is not None
    assert (WIFI.why_not(facts.version or "", facts.idf_version) == "") is served


def test_espressifs_release_is_not_taken_for_the_wifi_build(qemu: Path, wifi_qemu: Path) -> None:
    """Both are qemu-system-xtensa with the esp32 machine: only the probe tells them apart."""
    assert WIFI is not None
    assert not qemu.samefile(wifi_qemu)
    assert not qemu_has_wifi(qemu) and qemu_has_wifi(wifi_qemu)
    assert machine.find_wifi_qemu(qemu) == wifi_qemu  # an explicit --qemu without it is passed over


def qemu_has_wifi(path: Path) -> bool:
    assert WIFI is not None
    return machine.has_device(path, WIFI.device)


def test_a_named_binary_without_the_model_is_refused_with_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "qemu-system-xtensa"
    fake.write_text("#!/bin/sh\necho \"Device '$2' not found\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("HARNESS_QEMU_WIFI", str(fake))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.espressif/tools here
    monkeypatch.delenv("IDF_TOOLS_PATH", raising=False)
    with pytest.raises(QemuNotFound) as err:
        machine.find_wifi_qemu()
    assert f"found but without it: {fake} (HARNESS_QEMU_WIFI)" in str(err.value)
    assert "esp32-open-mac's QEMU (esp-develop at 4a5c772afe" in str(err.value)


def test_a_release_it_does_not_serve_gets_the_reason_before_any_probe(
    fw: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch, "find_wifi_qemu", _never)
    facts = FirmwareFacts.read(fw("v1.27.0"))
    assert launch.why_no_network(facts) == (
        "this QEMU emulates Wi-Fi for ESP-IDF 5.0 builds only; v1.27.0 is 5.5.1"
    )


def _never(*_: object) -> Path:
    raise AssertionError("probed a QEMU for a release it cannot serve")


def test_the_wifi_qemu_runs_with_its_nic_and_without_the_frames_in_the_logs() -> None:
    setup = machine.MachineSetup(Path("/q"), psram=False, watchdogs=False, network=True)
    cmd = machine.Machine(setup, Path("/f.bin"), Path("/run")).command(Path("/s"))
    assert "user,model=misc.esp32_wifi" in cmd and "none" not in cmd[cmd.index("-nic") + 1]
    plain = machine.MachineSetup(Path("/q"), psram=False, watchdogs=False)
    plain_cmd = machine.Machine(plain, Path("/f.bin"), Path("/run")).command(Path("/s"))
    assert plain_cmd[plain_cmd.index("-nic") + 1] == "none"


LIB = Path(__file__).parent.parent / "scenarios" / "files" / "device_lib"
FETCH = "import ota.update; ota.update.from_file('${url}')"


def _repro(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", "repro", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_repro_url_makes_the_board_join_the_network_and_download_it(
    fw: Callable[[str], Path], tmp_path: Path
) -> None:
    req = repro.Request(fw("v1.22.0"), fw("v1.22.0"), command=FETCH, device_lib=LIB, url=True)
    data = repro.scenario_data(req, tmp_path)
    assert [next(iter(s)) for s in data["steps"]] == ["boot", "wifi", "ota"]
    assert data["steps"][2]["ota"]["method"] == "download"
    cut = repro.scenario_data(dataclasses.replace(req, power_cut=5), tmp_path)["steps"]
    assert [next(iter(s)) for s in cut] == ["boot", "wifi", "power_cut", "boot"]


def test_repro_url_needs_a_command_that_names_the_url(
    fw: Callable[[str], Path], tmp_path: Path
) -> None:
    v122 = str(fw("v1.22.0"))
    run = _repro("--firmware", v122, "--update", v122, "--url", "--command",
                 "import ota.update; ota.update.from_file('/fw.bin')", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().startswith("error: --url serves the update over HTTP")
    assert "Traceback" not in run.stderr


def test_repro_url_on_a_release_the_wifi_cannot_serve_says_why_without_booting(
    fw: Callable[[str], Path], tmp_path: Path, qemu: Path
) -> None:
    v127 = str(fw("v1.27.0"))
    run = _repro("--firmware", v127, "--update", v127, "--url", "--command", FETCH,
                 "--device-lib", str(LIB), "--qemu", str(qemu), cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert ("reproduced: could not run: this QEMU emulates Wi-Fi for ESP-IDF 5.0 builds only; "
            "v1.27.0 is 5.5.1") in run.stdout  # fmt: skip
    assert list((tmp_path / "artifacts").rglob("result.json"))  # the skip, recorded
    assert not list((tmp_path / "artifacts").rglob("serial.log"))  # nothing booted


FETCH_SHA = """import requests, hashlib, binascii, time
t = time.ticks_ms()
r = requests.get('{url}')
h = hashlib.sha256()
buf = bytearray(1024)
n = 0
while True:
    got = r.raw.readinto(buf)
    if not got:
        break
    h.update(memoryview(buf)[:got])
    n += got
r.close()
print(r.status_code, n, binascii.hexlify(h.digest()).decode(), time.ticks_diff(time.ticks_ms(), t))
"""


@pytest.mark.emulation
def test_the_board_downloads_from_the_host_and_sees_each_fault_as_sent(
    qemu: Path, wifi_qemu: Path, fw: Callable[[str], Path], tmp_path: Path
) -> None:
    """One boot of v1.22.0 in the Wi-Fi QEMU: what the board receives through
    MicroPython's `requests` is what the server says it sent, fault by fault."""
    import hashlib

    from harness.emulator import device
    from harness.emulator.httpserver import HttpServer, Misbehaviour
    from harness.flash import recipes

    data = bytes((i * 7) & 0xFF for i in range(64 * 1024))
    ready = launch.prepare(fw("v1.22.0"), launch.Choices(network=True),
                           recipes.search_path(Path.cwd()))  # fmt: skip
    assert ready.policy.network
    cases = {
        "plain": (Misbehaviour(), data),
        "flipped": (Misbehaviour(flip=(100, 40000)), _flipped(data, (100, 40000))),
        "cut": (Misbehaviour(close_after=5000), data[:5000]),
        "long": (Misbehaviour(content_length=len(data) + 1000), data),
        "stalled": (Misbehaviour(stall_after=1000, stall_s=2.0), data),
    }
    with (
        HttpServer({"/f.bin": data}) as server,
        device.boot(
            ready.build(), device.BootOptions(ready.policy, qemu=wifi_qemu, artifacts=tmp_path)
        ) as dev,
    ):
        dev.wait_prompt(60)
        assert dev.connect_wifi() == ("10.0.2.15", "255.255.255.0", "10.0.2.2", "10.0.2.3")
        for name, (how, received) in cases.items():
            server.misbehave("/f.bin", how)
            url = server.url("10.0.2.2") + "/f.bin"
            status, n, sha, ms = dev.repl.exec(FETCH_SHA.format(url=url), 120).split()
            want = ("200", len(received), hashlib.sha256(received).hexdigest())
            assert (status, int(n), sha) == want, name
            if name == "stalled":
                assert int(ms) >= 2000
        cmdline = next(tmp_path.glob("*/qemu-cmdline.txt")).read_text()
    assert str(wifi_qemu) in cmdline and "user,model=misc.esp32_wifi" in cmdline
    assert [r.sent for r in server.requests] == [len(r) for _, r in cases.values()]
    assert server.requests[2].outcome == f"closed after 5000 of {len(data)} bytes (asked)"


def _flipped(data: bytes, offsets: tuple[int, ...]) -> bytes:
    out = bytearray(data)
    for o in offsets:
        out[o] ^= 0xFF
    return bytes(out)


def test_a_scenario_naming_the_server_without_a_network_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    from harness.scenario import format as scenario_format

    path = tmp_path / "s.yaml"
    path.write_text("title: t\nmatrix: {flash_size: [4MB], firmware: [x.bin]}\nsteps:\n"
                    "  - boot: prompt\n  - repl: \"print('${http}')\"\n")  # fmt: skip
    with pytest.raises(scenario_format.ScenarioError) as err:
        scenario_format.load(path)
    assert str(err.value) == (f"{path}:5: ${{http}}: the cell has no network: add "
                              "`requires: [network]` (or a `wifi` step, or `serve:`)")  # fmt: skip
    path.write_text(path.read_text().replace("title: t\n", "title: t\nrequires: [network]\n"))
    assert scenario_format.load(path).needs() == {"network"}


def test_download_dies_points_spread_over_the_payload_and_its_ends() -> None:
    from harness.scenario.download import points
    from harness.scenario.stepformats import DownloadDiesArgs

    ota = {"payload": "app", "method": "download", "command": "x('${url}')"}
    assert points(DownloadDiesArgs(ota=ota, sweep=2), 900) == [0, 300, 600, 899]
    assert points(DownloadDiesArgs(ota=ota, at=[5, 1]), 900) == [1, 5]
    with pytest.raises(Exception, match="900 is not before the payload's end: it has 900 bytes"):
        points(DownloadDiesArgs(ota=ota, at=[900]), 900)
    with pytest.raises(ValueError, match="interrupts a download"):
        DownloadDiesArgs(ota={**ota, "method": "library"}, sweep=2)


def _served_cell(tmp_path: Path, fw: Callable[[str], Path], files: str) -> object:
    """The one cell (v1.22.0, 4MB, a boot) of a scenario serving `files` (YAML flow map)."""
    from harness.scenario import format as scenario_format
    from harness.scenario import plan
    from harness.sources.manifest import FirmwareSelector

    path = tmp_path / "s.yaml"
    matrix = f"matrix: {{flash_size: [4MB], firmware: [{fw('v1.22.0')}]}}\n"
    path.write_text(f"title: t\n{matrix}serve: {{files: {files}}}\nsteps:\n  - boot: prompt\n")
    [cell] = plan.cells(scenario_format.load(path), FirmwareSelector(download=False),
                        plan.RunOptions())  # fmt: skip
    return cell


def test_a_cells_server_serves_its_files_and_is_gone_when_the_attempt_fails(
    wifi_qemu: Path, fw: Callable[[str], Path], tmp_path: Path
) -> None:
    """serving.serve: the scenario's `serve:` files on 127.0.0.1, each request in
    http.json; an error inside the attempt still stops the server."""
    import urllib.request

    from harness.scenario import plan, serving
    from harness.scenario.results import HttpLog

    (tmp_path / "hello.txt").write_text("hello")
    cell = _served_cell(tmp_path, fw, "{/hello.txt: hello.txt}")
    assert isinstance(cell, plan.CellPlan) and cell.policy.network
    with (
        pytest.raises(RuntimeError),
        serving.serve(cell, tmp_path, lambda s: tmp_path / s) as server,
    ):
        url = server.url() + "/hello.txt"
        assert urllib.request.urlopen(url, timeout=10).read() == b"hello"
        raise RuntimeError("the attempt failed")
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)
    log = HttpLog.model_validate_json((tmp_path / "http.json").read_text())
    assert log.url == f"http://10.0.2.2:{server.port}"
    assert [(r.path, r.status, r.sent) for r in log.requests] == [("/hello.txt", 200, 5)]


def test_a_served_file_that_cannot_be_read_fails_the_cell_in_one_line(
    wifi_qemu: Path, fw: Callable[[str], Path], tmp_path: Path
) -> None:
    from harness.scenario import plan, runner

    cell = _served_cell(tmp_path, fw, "{/a.bin: missing.bin}")
    assert isinstance(cell, plan.CellPlan)
    result = runner.run_cell(cell, runner.Setup(tmp_path / "artifacts", "/nonexistent"))
    assert result.status == "failed"
    assert result.message.startswith(f"{cell.name}: the HTTP server cannot start: ")
    assert "missing.bin" in result.message.splitlines()[0]
    assert not list((tmp_path / "artifacts").rglob("serial.log"))  # nothing booted
