"""A user's own scenario, run from the user's own folder, as a new user writes one.

Named by a relative path, with no `source:` (the library's convention, not the format's),
it uses a file beside it through `${scenario_dir}`, esptool with its defaults (no stub
setting of its own), and an `expect` after a `run` step that leaves the board unable to
boot: a 16MB partition table written onto a 4MB board.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.flash import images

SCENARIO = """\
title: My 4MB board after writing the 16MB table from the guide
matrix: {flash_size: [4MB], firmware: [ESP32_GENERIC-OTA@v1.25.0]}
steps:
  - boot: prompt
  - run: esptool --port ${rfc2217} write-flash 0x8000 ${scenario_dir}/table16.bin
  - expect:
      - "exceeds flash chip size 0x400000"
      - "boot: Failed to verify partition table"
      - "boot: load partition table error!"
      - "rst:0x3 (SW_RESET)"
"""


@getattr(pytest.mark, "4mb")
def test_a_users_scenario_from_their_own_folder(qemu, fw, firmware_selector, tmp_path) -> None:
    firmware = fw("OTA-20250415-v1.25.0")
    home = tmp_path / "my-project"
    (home / "repro").mkdir(parents=True)
    converted = images.convert(firmware.read_bytes(), ["-f", "16M", "--resize", "vfs=0"])
    (home / "repro" / "table16.bin").write_bytes(converted[0x7000:0x8000])  # the table, at 0x8000
    (home / "repro" / "bricked.yaml").write_text(SCENARIO)
    env = {k: v for k, v in os.environ.items() if k != "ESPTOOL_STUB_VERSION"}
    env["HARNESS_FIRMWARE_DIR"] = str(firmware.parent)
    run = subprocess.run(
        [sys.executable, "-m", "harness", "run", "repro/bricked.yaml", "--qemu", str(qemu),
         "--artifacts", "artifacts"],
        cwd=home, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS bricked[4mb-v1.25.0]" in run.stdout
    folder = home / "artifacts" / "bricked[4mb-v1.25.0]"
    assert "E (" in (folder / "serial.log").read_text(errors="replace")
