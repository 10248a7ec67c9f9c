"""Fetching what the harness runs: Espressif's QEMU release and official MicroPython firmware.

The pinned QEMU releases are the table below, one per QEMU tool a chip's profile names
(harness.chips: qemu-xtensa for the ESP32), the one place that names them: `harness qemu
install`, the Dockerfile (build args checked against it by the test suite) and the
README all follow it. A download goes to a temporary file beside its destination, is
checked (sha256 for QEMU; for firmware, that it is an ESP32 image, and the sha256
recorded on first download), and only then moved into place: offline, on a mismatch
or on Ctrl-C, nothing half-installed is left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .. import chips
from ..chips import Chip
from ..errors import HarnessError
from ..flash import formats
from ..paths import idf_tools_dir
from . import qemubuild

RELEASES_URL = "https://github.com/espressif/qemu/releases/download"
MICROPYTHON_URL = "https://micropython.org"
# A folder of the official firmware files by their own names, over HTTP (a company mirror,
# or micropython.org's own https://micropython.org/resources/firmware); empty: micropython.org.
MIRROR_VARIABLE = "HARNESS_FIRMWARE_MIRROR"


@dataclass(frozen=True)
class Asset:
    url: str
    sha256: str | None  # None: not pinned here; pass --sha256 to install it
    size: int | None


# ESP-IDF's currently recommended Espressif QEMU (tools/tools.json, qemu-xtensa), for the
# chips that boot (harness.chips): tool -> version -> machine architecture -> archive.
QEMU_VERSION = "esp_develop_9.2.2_20260417"
QEMU_RELEASES: dict[str, dict[str, dict[str, Asset]]] = {"qemu-xtensa": {
    QEMU_VERSION: {
        "x86_64": Asset(
            f"{RELEASES_URL}/esp-develop-9.2.2-20260417/"
            "qemu-xtensa-softmmu-esp_develop_9.2.2_20260417-x86_64-linux-gnu.tar.xz",
            "0eecb2a34a5586c0e59110f77b9343b7b336e82fdb0e1a30e1dc1bab8a547e35",
            15619396,
        ),
        "aarch64": Asset(
            f"{RELEASES_URL}/esp-develop-9.2.2-20260417/"
            "qemu-xtensa-softmmu-esp_develop_9.2.2_20260417-aarch64-linux-gnu.tar.xz",
            None,
            None,
        ),
    }
}}  # fmt: skip
# Runtime libraries the Linux release links against (Espressif's QEMU documentation).
QEMU_DEBIAN_PACKAGES = [
    "libgcrypt20",
    "libglib2.0-0",
    "libpixman-1-0",
    "libsdl2-2.0-0",
    "libslirp0",
]


def _pins(chip: Chip) -> tuple[str, dict[str, dict[str, Asset]]]:
    """The chip's QEMU tool and its pinned releases."""
    if chip.qemu is None or not chip.boots:
        raise HarnessError(f"no QEMU to install for {chip.name}: {chip.why_not()}")
    if chip.qemu.tool not in QEMU_RELEASES:
        raise HarnessError(f"no {chip.qemu.tool} release is pinned (harness.sources.downloads)")
    return chip.qemu.tool, QEMU_RELEASES[chip.qemu.tool]


def docker_build_args(version: str = QEMU_VERSION) -> dict[str, str]:
    """The Dockerfile's QEMU build args, from this table (make docker-build passes them)."""
    _, pinned = _pins(chips.DEFAULT)
    amd64, arm64 = pinned[version]["x86_64"], pinned[version]["aarch64"]
    return {
        "QEMU_VERSION": version,
        "QEMU_URL_AMD64": amd64.url,
        "QEMU_SHA256_AMD64": amd64.sha256 or "",
        "QEMU_URL_ARM64": arm64.url,
        "QEMU_SHA256_ARM64": arm64.sha256 or "",
    }


def tools_dir(chip: Chip = chips.DEFAULT) -> Path:
    """Where ESP-IDF's installer keeps the chip's QEMU (qemu-xtensa), so either tool finds
    the other's."""
    return idf_tools_dir() / _pins(chip)[0]


def qemu_asset(version: str, machine: str | None = None, chip: Chip = chips.DEFAULT) -> Asset:
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine or "", machine)
    arch = arch or platform.machine()
    tool, pinned = _pins(chip)
    if version not in pinned:
        raise HarnessError(f"no pinned {tool} release {version!r} (pinned: {', '.join(pinned)})")
    if arch not in pinned[version]:
        raise HarnessError(f"Espressif publishes no {version} QEMU for {arch}")
    return pinned[version][arch]


def install_qemu(
    version: str | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    chip: Chip = chips.DEFAULT,
) -> tuple[Path, bool]:
    """Install the chip's pinned QEMU (`version`, default the newest pin) under
    tools_dir()/version; return (binary, newly installed)."""
    tool, pinned = _pins(chip)
    assert chip.qemu is not None  # _pins refuses a chip without one
    version = version or max(pinned)
    target = tools_dir(chip) / version
    binary = target / "qemu" / "bin" / chip.qemu.binary
    if binary.is_file():
        return binary, False
    asset = qemu_asset(version, chip=chip) if not (url and sha256) else Asset(url, sha256, None)
    expected = sha256 or asset.sha256
    if not expected:
        raise HarnessError(
            f"no sha256 is pinned for {asset.url}: give --sha256 (from Espressif's release "
            "page) to install it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{version}-") as tmp:
        archive = Path(tmp) / "qemu.tar.xz"
        _download(url or asset.url, archive, expected, progress)
        unpacked = Path(tmp) / "unpacked"
        try:
            with tarfile.open(archive, "r:xz") as tar:
                qemubuild.extract(tar, unpacked)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise HarnessError(
                f"the QEMU archive from {url or asset.url} is broken: {exc}"
            ) from None
        if not (unpacked / "qemu" / "bin" / chip.qemu.binary).is_file():
            raise HarnessError(f"the {tool} archive has no qemu/bin/{chip.qemu.binary}; not "
                               "installed")  # fmt: skip
        os.replace(unpacked, target)  # atomic: the folder is whole or absent
    return binary, True


def _download(url: str, dest: Path, sha256: str | None, progress: bool) -> str:
    """Stream `url` to `dest`, hashing as it goes; return the sha256 (checked if given)."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as reply, open(dest, "wb") as out:
            total = int(reply.headers.get("Content-Length") or 0)
            done = 0
            while chunk := reply.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    _bar(done, total, url)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise HarnessError(
            f"cannot download {url}: {reason} (offline? nothing was installed)"
        ) from None
    finally:
        if progress and sys.stderr.isatty():
            sys.stderr.write("\n")
    got = digest.hexdigest()
    if sha256 and got != sha256:
        raise HarnessError(
            f"sha256 mismatch for {url}: expected {sha256}, got {got}; nothing was installed"
        )
    return got


def _bar(done: int, total: int, url: str) -> None:
    if not sys.stderr.isatty():
        return
    name = url.rsplit("/", 1)[-1][:40]
    if total:
        filled = int(30 * done / total)
        sys.stderr.write(f"\r{name} [{'#' * filled}{'.' * (30 - filled)}] "
                         f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")  # fmt: skip
    else:
        sys.stderr.write(f"\r{name} {done / 1e6:.1f} MB")
    sys.stderr.flush()


# -- firmware ----------------------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """A firmware file to fetch: BOARD or BOARD-VARIANT at a version; `filename` and
    `sha256` when the manifest pins them."""

    name: str
    version: str
    filename: str | None = None
    sha256: str | None = None


def fetch_firmware(
    wanted: Wanted, *, cache: Path, base_url: str | None = None, progress: bool = True
) -> tuple[Path, bool]:
    """The official firmware file `wanted`; return (path, new).

    A pinned file is downloaded and must match its sha256. Otherwise the file name carries
    a build date the user does not know, so the board's download page (or the mirror's
    folder listing) is read for the link, and the sha256 is recorded on first download
    (`checksums.json`). A file already in the cache is checked against its pin or record
    and used without the network. `base_url` (a micropython.org mirror) wins over the
    firmware mirror of the environment (`firmware_mirror()`).
    """
    name, filename, sha256 = wanted.name, wanted.filename, wanted.sha256
    version = wanted.version if wanted.version.startswith("v") else f"v{wanted.version}"
    if not re.fullmatch(r"[A-Z0-9_]+(-[A-Z0-9_]+)?", name):
        raise HarnessError(f"{name!r} is not a board name like ESP32_GENERIC or ESP32_GENERIC-OTA")
    sums_path = cache / "checksums.json"
    try:
        sums = json.loads(sums_path.read_text()) if sums_path.is_file() else {}
    except ValueError:
        raise HarnessError(f"{sums_path} is damaged: delete it and fetch again") from None
    pattern = re.compile(rf"{re.escape(name)}-(\d{{8}})-{re.escape(version)}\.bin")
    cached = sorted(p for p in cache.glob(f"{name}-*-{version}.bin") if pattern.fullmatch(p.name))
    if filename:
        cached = [p for p in cached if p.name == filename]
    if cached:
        path = cached[-1]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        expected = sha256 or sums.get(path.name)
        if expected not in (None, digest):
            raise HarnessError(
                f"{path} changed since it was downloaded (sha256 {digest}, expected "
                f"{expected}): delete it and fetch again"
            )
        return path, False
    mirror = None if base_url else firmware_mirror()
    site = (base_url or os.environ.get("HARNESS_MICROPYTHON_URL") or MICROPYTHON_URL).rstrip("/")
    if not filename:
        find = _find_in_listing if mirror else _find_on_download_page
        filename = find(mirror or site, name, version, pattern)
    folder = mirror or f"{site}/resources/firmware"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        staged = Path(tmp) / filename
        url = f"{folder}/{filename}"
        digest = _download(url, staged, None, progress)
        _check_chip(staged.read_bytes(), name, f"{filename} from {folder}")
        if sha256 and digest != sha256:
            raise HarnessError(
                f"sha256 mismatch for {url}: expected {sha256} (pinned), got {digest}; not kept"
            )
        os.replace(staged, cache / filename)
    sums[filename] = digest
    sums_path.write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return cache / filename, True


def _check_chip(data: bytes, name: str, what: str) -> None:
    """A downloaded firmware is a firmware image for the chip its board is for
    (ESP32_GENERIC: esp32, ESP32_GENERIC_C3: esp32c3; harness.chips)."""
    header = formats.ImageHeader.parse(data)
    if formats.classify(data) != "firmware" or header is None or header.profile is None:
        raise HarnessError(f"{what} is not an ESP32 firmware image; not kept")
    expected = next((c for c in chips.CHIPS if c.board == name.split("-")[0]), None)
    if expected is not None and header.profile is not expected:
        raise HarnessError(f"{what} is built for {header.chip}, not {expected.name} as "
                           f"{expected.board} is; not kept")  # fmt: skip


def firmware_mirror() -> str | None:
    """The firmware mirror of the environment (`HARNESS_FIRMWARE_MIRROR`), None when unset."""
    value = os.environ.get(MIRROR_VARIABLE, "").strip().rstrip("/")
    if value and not re.match(r"https?://", value):
        raise HarnessError(
            f"{MIRROR_VARIABLE}={value!r} is not an http(s):// address of a folder of "
            "firmware files: set it to one, or leave it empty"
        )
    return value or None


def _find_in_listing(mirror: str, name: str, version: str, pattern: re.Pattern[str]) -> str:
    """The dated file name of `name` `version` in the mirror's folder listing."""
    return _newest(*_read_page(f"{mirror}/"), name, version, pattern)


def _download_page(base: str, board: str) -> tuple[str, str]:
    """(address, text) of micropython.org's download page of `board`."""
    return _read_page(f"{base}/download/{board}/")


def _read_page(page: str) -> tuple[str, str]:
    try:
        with urllib.request.urlopen(page, timeout=30) as reply:
            return page, reply.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise HarnessError(f"cannot read {page}: {reason} (offline?)") from None


def _find_on_download_page(base: str, name: str, version: str, pattern: re.Pattern[str]) -> str:
    """The dated file name of `name` `version` on the board's download page."""
    return _newest(*_download_page(base, name.split("-")[0]), name, version, pattern)


def _newest(page: str, html: str, name: str, version: str, pattern: re.Pattern[str]) -> str:
    found = sorted({m.group(0) for m in pattern.finditer(html)})
    if not found:
        raise HarnessError(f"{page} lists no {name} firmware {version}")
    return found[-1]


def version_key(version: str) -> tuple[int, ...]:
    """v1.29.0 -> (1, 29, 0), for comparing releases."""
    return tuple(int(n) for n in re.findall(r"\d+", version)[:3])


@dataclass(frozen=True)
class Releases:
    """The releases of one board that micropython.org's download page lists."""

    page: str
    versions: tuple[str, ...]  # oldest first; previews and nightly builds left out

    @property
    def newest(self) -> str | None:
        return self.versions[-1] if self.versions else None


def releases(board: str = chips.DEFAULT.board, base_url: str | None = None) -> Releases:
    """What the board's download page offers (HarnessError, one line, when it cannot be read)."""
    base = (base_url or os.environ.get("HARNESS_MICROPYTHON_URL") or MICROPYTHON_URL).rstrip("/")
    page, html = _download_page(base, board)
    found = re.findall(rf"\b{re.escape(board)}-\d{{8}}-(v\d+\.\d+\.\d+)\.(?:bin|app-bin)\b", html)
    return Releases(page, tuple(sorted(set(found), key=version_key)))
