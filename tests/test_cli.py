"""The command line: one-line errors for bad input, never a traceback; inputs untouched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def assert_one_line_error(run: subprocess.CompletedProcess[str], *words: str) -> None:
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    first = run.stderr.splitlines()[0]
    assert first.startswith("error: ")
    for word in words:
        assert word in first


def test_inspect_missing_file() -> None:
    assert_one_line_error(harness("inspect", "/no/such/file.bin"), "no such file")


def test_inspect_text_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not firmware\n")
    assert_one_line_error(harness("inspect", str(text)), "not an ESP32 image")


def test_boot_refuses_flash_sizes_qemu_cannot_emulate(fw) -> None:
    for size in ("3MB", "32MB"):
        run = harness("boot", str(fw("OTA-20250415-v1.25.0")), "--flash-size", size, "--exec", "1")
        assert_one_line_error(run, size, "2MB, 4MB, 8MB or 16MB")


def test_boot_with_a_qemu_that_is_not_executable(fw, tmp_path: Path) -> None:
    fake = tmp_path / "qemu-system-xtensa"
    fake.write_text("#!/bin/sh\n")
    run = harness("boot", str(fw("OTA-20250415-v1.25.0")), "--qemu", str(fake), "--exec", "1")
    assert_one_line_error(run, "not an executable file", "harness qemu install")


def test_image_build_writes_exact_size_and_never_overwrites_its_input(fw, tmp_path) -> None:
    src = fw("OTA-20250415-v1.25.0")
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "flash16.bin"
    run = harness("image", "build", str(src), "--flash-size", "16MB", "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert out.stat().st_size == 16 << 20
    assert_one_line_error(harness("image", "build", str(src), "-o", str(src)), "overwrite")
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(
    ("name", "kind", "ok"),
    [
        ("ESP32_GENERIC-OTA-20231227-v1.22.0.app-bin", "app", True),
        ("ESP32_GENERIC-OTA-20231227-v1.22.0.bin", "firmware", False),
    ],
)
def test_inspect_json_is_stable_and_says_what_the_file_is(firmware_dir, name, kind, ok) -> None:
    run = harness("inspect", str(firmware_dir / name), "--json")
    assert run.returncode == 0, run.stderr
    rep = json.loads(run.stdout)
    assert rep["schema"] == 1
    assert (rep["kind"], rep["chip"], rep["ota_payload"]["ok"]) == (kind, "esp32", ok)
    if kind == "firmware":
        assert [p["name"] for p in rep["partitions"]][:5] == [
            "nvs", "otadata", "phy_init", "ota_0", "ota_1"]  # fmt: skip
        assert rep["boot"]["slot"] == "ota_0"
        assert "not an app image" in rep["ota_payload"]["verdict"]


def test_a_closed_pipe_ends_the_command_quietly(fw) -> None:
    """`harness inspect FILE | head -1`: the reader left; no error line, SIGPIPE's status."""
    proc = subprocess.Popen([sys.executable, "-m", "harness", "inspect", "--json",
                             str(fw("OTA-20250415-v1.25.0"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141
    assert err == ""


def test_an_option_several_commands_take_is_declared_once() -> None:
    """`--qemu` (and `--watchdogs`) is one declaration every command that boots shares,
    each command's parser living beside its code (harness.frontends.commands)."""
    import argparse

    from harness.frontends import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def declared(option: str) -> dict[str, argparse.Action]:
        return {name: action for name, p in sub.choices.items() for action in p._actions
                if option in action.option_strings}  # fmt: skip

    qemu = declared("--qemu")
    assert set(qemu) == {"boot", "run", "provision", "repro", "upgrade"}
    assert len({id(a) for a in qemu.values()}) == 1  # the same declaration in each
    assert len({id(a) for a in declared("--watchdogs").values()}) == 1
    modules = {c.__name__.rsplit(".", 1)[-1] for c in cli.COMMANDS}
    assert {"boot", "image", "repro", "inspect"} <= modules
