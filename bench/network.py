"""The network's cost: download speed on the device, and a network cell against a staged one.

All in one run, on v1.22.0 OTA (ESP-IDF 5.0.4, which the Wi-Fi QEMU serves), one after
the other, retries off:
- download: the board joins the Wi-Fi QEMU's access point and reads the app (HTTP from the
  host's server) into a buffer it throws away: MicroPython's `requests` and a raw socket,
  timed on the device (ticks_ms) and, the connect included, on the host;
- cells, each a scenario run by the runner as `harness run` runs it, boot included:
  `staged` (the app written into ota_1 before the boot, set_boot(), reboot), `library`
  (the stand-in library's from_file('/fw.bin') from the filesystem) and `download` (the
  same library's from_file('${url}') over Wi-Fi).

Prints a table and a final key=value line. Needs the Wi-Fi QEMU (docs/network.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.emulator import device, launch
from harness.emulator.httpserver import HttpServer
from harness.flash import images, recipes
from harness.flash.size import FlashSize
from harness.scenario import format, plan, runner
from harness.sources import manifest

FIRMWARE = "ESP32_GENERIC-OTA@v1.22.0"
# the starting report's size; a 4MB filesystem cannot hold the library cell's /fw.bin
FLASH = FlashSize.parse("16MB")
LIB = Path(__file__).resolve().parent.parent / "scenarios" / "files" / "device_lib"
READ = """import requests, time
t = time.ticks_ms()
r = requests.get('{url}')
buf = bytearray(4096)
n = 0
while True:
    got = r.raw.readinto(buf)
    if not got:
        break
    n += got
print(n, time.ticks_diff(time.ticks_ms(), t) / 1000)
"""
RAW = """import socket, time
t = time.ticks_ms()
s = socket.socket()
s.connect(socket.getaddrinfo('{host}', {port})[0][-1])
s.write(b'GET /app.bin HTTP/1.0\\r\\n\\r\\n')
buf = bytearray(4096)
n = 0
while True:
    got = s.readinto(buf)
    if not got:
        break
    n += got
s.close()
print(n, time.ticks_diff(time.ticks_ms(), t) / 1000)
"""
CELLS: dict[str, list[dict[str, Any]]] = {
    "staged": [{"ota": {"payload": "app", "method": "staged"}}],
    "library": [{"ota": {"payload": "app", "method": "library", "device_lib": str(LIB),
                         "command": "import ota.update\nota.update.from_file('/fw.bin')"}}],
    "download": [{"wifi": "connect"},
                 {"ota": {"payload": "app", "method": "download", "device_lib": str(LIB),
                          "command": "import ota.update\nota.update.from_file('${url}')"}}],
}  # fmt: skip


def download(firmware: Path, app: bytes, qemu: str | None) -> dict[str, float]:
    """Seconds to fetch the app: through requests and a raw socket (device clock)."""
    ready = launch.prepare(firmware, launch.Choices(flash_size=FLASH, network=True),
                           recipes.search_path(Path.cwd()))  # fmt: skip
    image = ready.build()
    out: dict[str, float] = {}
    with (
        HttpServer({"/app.bin": app}) as server,
        device.boot(image, device.BootOptions(ready.policy, qemu=qemu)) as dev,
    ):
        dev.wait_prompt(60)
        start = time.monotonic()
        dev.connect_wifi()
        out["connect"] = time.monotonic() - start
        url = server.url("10.0.2.2") + "/app.bin"
        for name, code in (("requests", READ.format(url=url)),
                           ("socket", RAW.format(host="10.0.2.2", port=server.port))):  # fmt: skip
            got, took = dev.repl.exec(code, 300).split()
            assert int(got) >= len(app), (name, got)
            out[name] = float(took)
    return out


def cell(name: str, steps: list[dict[str, Any]], folder: Path, firmware: Path) -> float:
    data = {"title": f"bench {name}", "source": "bench/network.py", "requires": ["ota"],
            "matrix": {"flash_size": [str(FLASH)], "firmware": [str(firmware)]},
            "steps": [{"boot": "prompt"}, *steps, {"assert_booted": "ota_1"}]}  # fmt: skip
    scenario = format.from_data(data, folder / f"{name}.yaml")
    [planned] = plan.cells(scenario, manifest.selector(), plan.RunOptions())
    assert isinstance(planned, plan.CellPlan), getattr(planned, "reason", planned)
    runner.build(planned)  # the image cached before the clock starts
    result = runner.run_cell(planned, runner.Setup(folder / "artifacts"))
    assert result.status == "passed", result.message
    return result.elapsed_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qemu")
    args = ap.parse_args()
    firmware = manifest.selector().entry(FIRMWARE).path
    with tempfile.TemporaryDirectory() as tmp:
        app = images.convert(firmware.read_bytes(), ["-x"])
        print(f"{FIRMWARE}: the app, {len(app)} bytes, {FLASH} image, {time.strftime('%F')}")
        fetched = download(firmware, app, args.qemu)
        for name in ("requests", "socket"):
            rate = len(app) / fetched[name] / 1024
            print(f"  download via {name:<9}{fetched[name]:>7.1f} s  {rate:>6.0f} KiB/s")
        print(f"  connect to the access point {fetched['connect']:.1f} s")
        took = {name: cell(name, steps, Path(tmp), firmware) for name, steps in CELLS.items()}
        for name, seconds in took.items():
            print(f"  cell {name:<12}{seconds:>7.1f} s  ({seconds / took['staged']:.2f}x staged)")
    print(" ".join([f"app_bytes={len(app)}", *(f"{k}_s={v:.1f}" for k, v in fetched.items()),
                    *(f"cell_{k}_s={v:.1f}" for k, v in took.items())]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
