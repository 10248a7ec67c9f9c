"""pytest plugin: command-line options and fixtures for emulation tests.

Tests that take the `qemu` fixture are emulation tests: they are skipped, with a
reason that says how to get Espressif's QEMU, when none can be found, and run for
real when one is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .errors import QemuNotFound
from .qemu import find_qemu


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("esp32-ota-harness")
    group.addoption("--qemu", help="Espressif's qemu-system-xtensa (default: search)")
    group.addoption(
        "--firmware-dir",
        help="folder of official MicroPython ESP32 firmware "
        "(default: HARNESS_FIRMWARE_DIR or ../shared/firmware)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "qemu" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.emulation)


@pytest.fixture(scope="session")
def qemu(pytestconfig: pytest.Config) -> Path:
    """The QEMU binary, or a skip that says how to get one."""
    try:
        return find_qemu(pytestconfig.getoption("qemu"))
    except QemuNotFound as exc:
        pytest.skip(f"emulation test skipped: {exc}")


@pytest.fixture(scope="session")
def firmware_dir(pytestconfig: pytest.Config) -> Path:
    """The folder of real firmware files (read only; never copied into the project)."""
    given = pytestconfig.getoption("firmware_dir") or os.environ.get("HARNESS_FIRMWARE_DIR")
    path = Path(given) if given else Path(pytestconfig.rootpath).parent / "shared" / "firmware"
    if not path.is_dir():
        pytest.skip(f"no firmware folder at {path}: set HARNESS_FIRMWARE_DIR or --firmware-dir")
    return path
