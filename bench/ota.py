"""OTA of the v1.25.0 app image on a 16MB image: staged, fast path, vfs-file path, floor.

All in one run, on the same image and QEMU:
- staged: the app written into ota_1 of the flash file before the boot; the device only
  runs set_boot() and reboots (no emulated flash write at all);
- fast: `ota.update()` end to end (payload over UART1, written in 32 KiB chunks, checked in
  the flash file, set_boot(), reboot, booted partition asked of the REPL);
- vfs: a device library's `from_file('/fw.bin')` reading the payload from the littlefs vfs,
  as MicroPython mounts it (readsize=32) and remounted with readsize=1024 (same library);
- floor: the device's own time (ticks_ms) to write, then read back, as many 4 KiB blocks.

Prints a table and a final key=value line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness.emulator import device, ota, policy
from harness.emulator.device import BootOptions
from harness.flash import formats, images
from harness.flash.size import FlashSize
from harness.sources import manifest

FLOOR = """
import esp32, time
p = esp32.Partition.find(esp32.Partition.TYPE_APP, label='ota_1')[0]
buf = bytearray(b'\\xa5' * 4096)
t0 = time.ticks_ms()
for i in range({n}): p.writeblocks(i, buf)
t1 = time.ticks_ms()
for i in range({n}): p.readblocks(i, buf)
print(time.ticks_diff(time.ticks_ms(), t0) / 1000)
"""
COMMAND = "import ota.update\nota.update.from_file('/fw.bin', reboot=True)"


def _row(name: str, rows: dict[str, float]) -> None:
    print(f"  {name:<36}{rows[name]:>9.1f} s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firmware", default="ESP32_GENERIC-OTA@v1.25.0", help="manifest entry")
    ap.add_argument("--qemu")
    args = ap.parse_args()
    firmware = manifest.selector().entry(args.firmware).path
    lib = Path(__file__).resolve().parent.parent / "scenarios" / "files" / "device_lib"
    with tempfile.TemporaryDirectory() as tmp:
        converted = images.convert(firmware.read_bytes(), ["-f", "16M", "--resize", "vfs=0"])
        app = Path(tmp) / "app.bin"
        app.write_bytes(images.convert(converted, ["-x"]))
        size = app.stat().st_size
        print(f"OTA of {size} bytes (v1.25.0 app) on a 16MB image, {time.strftime('%F')}")
        plain = images.build(images.Recipe(firmware, FlashSize(16)))
        with_file = images.build(images.Recipe(
            firmware, FlashSize(16), vfs_files=((lib, "/lib"), (app, "/fw.bin"))))  # fmt: skip
        rows: dict[str, float] = {}
        with device.boot(plain, BootOptions(policy.for_image(plain), qemu=args.qemu)) as dev:
            dev.wait_prompt(30)
            start = time.monotonic()
            report = ota.update(dev, app)
            rows["fast path (harness, UART1)"] = time.monotonic() - start
            assert report.booted == "ota_1" and report.slot_matches_payload, report
            _row("fast path (harness, UART1)", rows)
        ota_1 = formats.parse_table(plain.read_bytes()).get("ota_1")
        assert ota_1 is not None
        stage = [(ota_1.offset, ota.staged_bytes(app, ota_1))]
        with device.boot(
            plain, BootOptions(policy.for_image(plain), qemu=args.qemu, stage=tuple(stage))
        ) as dev:
            dev.wait_prompt(30)
            start = time.monotonic()
            report = ota.staged(dev, app, "ota_1")
            rows["staged (slot written before boot)"] = time.monotonic() - start
            assert report.booted == "ota_1" and report.slot_matches_payload, report
            _row("staged (slot written before boot)", rows)
        blocks = (size + 4095) // 4096
        with device.boot(plain, BootOptions(policy.for_image(plain), qemu=args.qemu)) as dev:
            dev.wait_prompt(30)
            rows[f"floor ({blocks} x 4 KiB write+read)"] = float(
                dev.repl.exec(FLOOR.format(n=blocks), timeout=600)
            )
        _row(f"floor ({blocks} x 4 KiB write+read)", rows)
        for name, readsize in (("vfs, readsize=1024 remount", 1024),
                               ("vfs file (library as is)", None)):  # fmt: skip
            with device.boot(
                with_file, BootOptions(policy.for_image(with_file), qemu=args.qemu)
            ) as dev:
                dev.wait_prompt(30)
                start = time.monotonic()
                report = ota.run_library(
                    dev, app, ota.Library(COMMAND, vfs_readsize=readsize), timeout=1200
                )
                rows[name] = time.monotonic() - start
                assert report.booted == "ota_1", report
                _row(name, rows)
    fast, floor = rows["fast path (harness, UART1)"], rows[f"floor ({blocks} x 4 KiB write+read)"]
    vfs, tuned = rows["vfs file (library as is)"], rows["vfs, readsize=1024 remount"]
    staged = rows["staged (slot written before boot)"]
    print(
        f"ota_fast_s={fast:.1f} ota_staged_s={staged:.1f} ota_vfs_s={vfs:.1f} "
        f"ota_vfs_tuned_s={tuned:.1f} floor_s={floor:.1f} fast_over_floor={fast / floor:.2f} "
        f"staged_over_floor={staged / floor:.2f} vfs_over_fast={vfs / fast:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
