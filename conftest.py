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


@pytest.fixture(scope="session", autouse=True)
def firmware_untouched(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the session if any firmware file changed while the suite ran."""
    folder = Path(request.config.rootpath).parent / "shared" / "firmware"
    before = _hashes(folder) if folder.is_dir() else {}
    yield
    if before:
        after = _hashes(folder)
        changed = [name for name in before if after.get(name) != before[name]]
        assert not changed, f"firmware files were modified by the test suite: {changed}"


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
