"""Where the harness keeps what it builds and downloads: the user's cache, never the project.

Each folder can be moved with an environment variable; otherwise it lives under
`$XDG_CACHE_HOME/esp32-ota-harness/` (default `~/.cache/esp32-ota-harness/`).
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache(variable: str, name: str) -> Path:
    """$variable, else ~/.cache/esp32-ota-harness/<name> (XDG_CACHE_HOME honoured)."""
    if os.environ.get(variable):
        return Path(os.environ[variable])
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "esp32-ota-harness" / name


def image_cache() -> Path:
    """Built flash images and payloads (HARNESS_CACHE)."""
    return user_cache("HARNESS_CACHE", "images")


def firmware_cache() -> Path:
    """Downloaded firmware and its recorded checksums (HARNESS_FIRMWARE_CACHE)."""
    return user_cache("HARNESS_FIRMWARE_CACHE", "firmware")


def local_firmware_dir() -> Path | None:
    """A folder of firmware files to use before the cache (HARNESS_FIRMWARE_DIR)."""
    value = os.environ.get("HARNESS_FIRMWARE_DIR")
    return Path(value) if value else None


def idf_tools_dir() -> Path:
    """Where ESP-IDF's installer keeps its tools (IDF_TOOLS_PATH, else ~/.espressif/tools):
    Espressif's QEMU is looked for, and installed, there."""
    return Path(os.environ.get("IDF_TOOLS_PATH") or Path.home() / ".espressif") / "tools"
