"""This repository's own test suite: firmware by the harness's rule, and inputs untouched.

The `harness.pytest_plugin` (installed with the package) adds --qemu, --firmware-dir,
the `qemu` and `firmware_selector` fixtures; this file adds what only this test suite
needs. Firmware comes the way users get it: a manifest entry, looked for in the local
folder (FIRMWARE_DIR / --firmware-dir), then the user cache, then downloaded.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.flash import images
from harness.flash.size import FlashSize
from harness.sources.manifest import FirmwareSelector, FirmwareUnavailable


def _hashes(folder: Path | None) -> dict[str, str]:
    if folder is None or not folder.is_dir():
        return {}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file()}  # fmt: skip


@pytest.fixture(scope="session")
def _firmware_hashes(firmware_selector: FirmwareSelector) -> dict[str, str]:
    return _hashes(firmware_selector.local)


@pytest.fixture(autouse=True)
def firmware_untouched(
    firmware_selector: FirmwareSelector, _firmware_hashes: dict[str, str]
) -> Iterator[None]:
    """Fail the test that changed any firmware file (sha256 before and after every test).

    Scenario items check their own firmware the same way, in harness.runner.
    """
    yield
    if _firmware_hashes:
        after = _hashes(firmware_selector.local)
        changed = [n for n in _firmware_hashes if after.get(n) != _firmware_hashes[n]]
        assert not changed, f"this test modified firmware files: {changed}"


@pytest.fixture(scope="session")
def firmware_dir(firmware_selector: FirmwareSelector) -> Path:
    """The local firmware folder, for tests that need a file the manifest does not pin."""
    if firmware_selector.local is None or not firmware_selector.local.is_dir():
        pytest.skip("needs a local firmware folder: set FIRMWARE_DIR (HARNESS_FIRMWARE_DIR)")
    return firmware_selector.local


@pytest.fixture(scope="session")
def fw(firmware_selector: FirmwareSelector) -> Callable[[str], Path]:
    """fw('OTA-20250415-v1.25.0') -> the pinned firmware whose file name has that text."""
    entries = firmware_selector.manifest().firmware

    def find(fragment: str) -> Path:
        entry = next((e for e in entries if e.file and fragment in e.file), None)
        if entry is None:
            raise LookupError(f"no pinned firmware file name contains {fragment!r}")
        try:
            return firmware_selector.entry(entry.id).path
        except FirmwareUnavailable as exc:
            pytest.skip(str(exc))

    return find


@pytest.fixture(scope="session")
def default_signals() -> Callable[[], None]:
    """preexec_fn for children a test signals: default SIGINT/SIGTERM, whatever this run
    inherited (a suite started as a background job has SIGINT ignored, and so would the
    CLI under test)."""

    def reset() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return reset


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One image cache for the session, so tests never depend on the user's cache."""
    return tmp_path_factory.mktemp("image-cache")


@pytest.fixture(scope="session")
def build_image(image_cache: Path) -> Callable[..., Path]:
    """build_image(firmware, '16MB', layout='ota', ...) -> a cached flash image."""

    def build(path: Path, size: str | None = None, **kwargs: object) -> Path:
        size_bytes = FlashSize.emulated(size) if size else None
        return images.build(images.Recipe(path, size_bytes, **kwargs), image_cache)  # type: ignore[arg-type]

    return build
