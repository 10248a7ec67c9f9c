"""Project-wide test setup: firmware files are inputs, and must come out untouched.

The `harness.pytest_plugin` (installed with the package) adds --qemu, the `qemu`
fixture and the firmware folder; this file adds what only this repository's own
test suite needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import images


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="session")
def _firmware_hashes(request: pytest.FixtureRequest) -> dict[str, str]:
    folder = Path(request.config.rootpath).parent / "shared" / "firmware"
    return _hashes(folder) if folder.is_dir() else {}


@pytest.fixture(autouse=True)
def firmware_untouched(request: pytest.FixtureRequest, _firmware_hashes) -> Iterator[None]:
    """Fail the test that changed any firmware file (sha256 before and after every test).

    Scenario items check their own firmware the same way, in harness.runner.
    """
    yield
    if _firmware_hashes:
        folder = Path(request.config.rootpath).parent / "shared" / "firmware"
        after = _hashes(folder)
        changed = [n for n in _firmware_hashes if after.get(n) != _firmware_hashes[n]]
        assert not changed, f"this test modified firmware files: {changed}"


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One image cache for the session, so tests never depend on the user's cache."""
    return tmp_path_factory.mktemp("image-cache")


@pytest.fixture(scope="session")
def fw(firmware_dir: Path) -> Callable[[str], Path]:
    """fw('v1.25.0') -> the firmware file whose name contains that text."""

    def find(fragment: str) -> Path:
        matches = sorted(p for p in firmware_dir.glob("*.bin") if fragment in p.name)
        if not matches:
            pytest.skip(f"no firmware matching {fragment!r} in {firmware_dir}")
        return matches[0]

    return find


@pytest.fixture(scope="session")
def build_image(image_cache: Path) -> Callable[..., Path]:
    """build_image(firmware, '16MB', layout='ota', ...) -> a cached flash image."""

    def build(firmware: Path, size: str | None = None, **kwargs: object) -> Path:
        size_bytes = images.parse_flash_size(size) if size else None
        return images.build(images.Recipe(firmware, size_bytes, **kwargs), image_cache)

    return build
