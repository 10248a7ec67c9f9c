"""Which firmware to run, and where to get it: the manifest and the one selection rule.

The manifest (`images/firmware.yaml`, shipped as harness.defaults) pins the firmware
the scenario library and the nightly matrix run on: board, variant, version, file
name, sha256. `FirmwareSelector` is the one rule, shared by `harness run`, `harness
provision` and the pytest plugin, that turns what a scenario or a command line names
into files. A manifest entry (`ESP32_GENERIC-OTA@v1.25.0`) is looked for in the local
folder (FIRMWARE_DIR), then in the user cache, then downloaded from micropython.org,
and its sha256 is checked every time; anything else is a path or a glob.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .. import paths, yamlfile
from ..errors import HarnessError
from ..flash.firmware import firmware_id, sha256_of

ENTRY_ID = re.compile(r"^(?P<name>[A-Z0-9_]+(?:-[A-Z0-9_]+)?)@(?P<version>v?\d+\.\d+(?:\.\d+)?)$")


class FirmwareUnavailable(HarnessError):
    """A named firmware that cannot be had here (not local, not cached, no download)."""


# -- the manifest --------------------------------------------------------------------


class FirmwareEntry(BaseModel):
    """One pinned release file. `file`/`sha256` null: not pinnable from here yet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    board: str = Field(pattern=r"^[A-Z0-9_]+$")
    variant: str | None = Field(default=None, pattern=r"^[A-Z0-9_]+$")
    version: str = Field(pattern=r"^v\d+\.\d+(\.\d+)?$")
    file: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    nightly: bool = False  # a release the nightly matrix runs the library on

    @property
    def name(self) -> str:
        """BOARD or BOARD-VARIANT, as micropython.org names its files."""
        return f"{self.board}-{self.variant}" if self.variant else self.board

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    firmware: list[FirmwareEntry] = Field(min_length=1)

    def get(self, entry_id: str) -> FirmwareEntry | None:
        wanted = entry_id if "@v" in entry_id else entry_id.replace("@", "@v")
        return next((e for e in self.firmware if e.id == wanted), None)


def narrowed(entries: list[FirmwareEntry], specs: str) -> list[FirmwareEntry]:
    """The entries that `specs` names (ids or versions, space- or comma-separated), in the
    manifest's order: how a rerun narrows the nightly to `v1.28.0`. Unknown: one line."""
    chosen: set[str] = set()
    for spec in specs.replace(",", " ").split():
        version = spec if spec.startswith("v") else f"v{spec}"
        hits = [e for e in entries if spec in (e.id, e.name) or e.version == version]
        if not hits:
            listed = ", ".join(e.id for e in entries)
            raise HarnessError(f"{spec!r} names none of the releases listed ({listed})")
        chosen.update(e.id for e in hits)
    return [e for e in entries if e.id in chosen]


def default_manifest_path() -> Path:
    """The manifest shipped with the harness (the repository's images/firmware.yaml)."""
    return Path(str(resources.files("harness.defaults") / "firmware.yaml"))


def load_manifest(path: Path | None = None) -> Manifest:
    manifest, _, _ = yamlfile.load(path or default_manifest_path(), Manifest, what="manifest")
    ids = [e.id for e in manifest.firmware]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise yamlfile.FileFormatError(f"{path}: firmware listed twice: {', '.join(twice)}")
    return manifest


# -- which files to run --------------------------------------------------------------


@dataclass(frozen=True)
class Firmware:
    """A firmware file chosen for a run, and how it was found."""

    path: Path
    id: str  # v1.25.0: what test ids show
    sha256: str
    entry: FirmwareEntry | None = None  # None: a path the user gave
    origin: str = "path"  # local | cache | downloaded | path

    @property
    def pinned(self) -> bool:
        return self.entry is None or self.entry.pinned


@dataclass(frozen=True)
class FirmwareSelector:
    """Where firmware comes from: the local folder, the user cache, then micropython.org."""

    local: Path | None = None
    cache: Path | None = None
    download: bool = True
    base_url: str | None = None
    manifest_path: Path | None = None

    @property
    def cache_dir(self) -> Path:
        return self.cache or paths.firmware_cache()

    @property
    def folder(self) -> Path:
        """What `${firmware_dir}` means in a scenario: the local folder, else the cache."""
        return self.local or self.cache_dir

    def manifest(self) -> Manifest:
        return load_manifest(self.manifest_path)

    def resolve(self, spec: str) -> list[Firmware]:
        """Files for one name: a manifest entry (exactly one), or a path or glob (any)."""
        if ENTRY_ID.match(spec):
            return [self.entry(spec)]
        found = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        files = [Path(f) for f in found if Path(f).is_file()]
        return [Firmware(p, firmware_id(p), sha256_of(p)) for p in files]

    def entry(self, entry_id: str) -> Firmware:
        """A manifest entry's file: local folder, then cache, then a download; sha256 checked."""
        manifest = self.manifest()
        entry = manifest.get(entry_id)
        if entry is None:
            known = ", ".join(e.id for e in manifest.firmware)
            raise FirmwareUnavailable(
                f"{entry_id} is not in the firmware manifest (it has: {known})"
            )
        for origin, folder in (("local", self.local), ("cache", self.cache_dir)):
            path = _find(folder, entry) if folder else None
            if path is not None:
                return self._checked(entry, path, origin)
        if not self.download:
            raise FirmwareUnavailable(self._missing(entry, "downloads are off"))
        from . import downloads  # the network only when a file is really missing

        try:
            wanted = downloads.Wanted(entry.name, entry.version, entry.file, entry.sha256)
            path, _ = downloads.fetch_firmware(wanted, cache=self.cache_dir, base_url=self.base_url)
        except HarnessError as exc:
            raise FirmwareUnavailable(self._missing(entry, str(exc))) from None
        return self._checked(entry, path, "downloaded")

    def _checked(self, entry: FirmwareEntry, path: Path, origin: str) -> Firmware:
        digest = sha256_of(path)
        expected = entry.sha256 or _recorded(self.cache_dir, path.name)
        if expected is not None and digest != expected:
            how = "its pin in the firmware manifest" if entry.sha256 else "its first download"
            raise FirmwareUnavailable(
                f"{path}: sha256 {digest} differs from {how} ({expected}): refused; "
                "delete the file and fetch it again"
            )
        return Firmware(path, entry.version, digest, entry, origin)

    def _missing(self, entry: FirmwareEntry, why: str) -> str:
        where = f"{self.local} or " if self.local else ""
        return (
            f"firmware {entry.id} ({entry.file or 'file name not pinned'}) is not in "
            f"{where}{self.cache_dir} and could not be downloaded ({why}); get it with "
            f"`harness firmware fetch {entry.name} {entry.version}` or point FIRMWARE_DIR "
            "at a folder that has it"
        )


def _find(folder: Path, entry: FirmwareEntry) -> Path | None:
    if entry.file:
        path = folder / entry.file
        return path if path.is_file() else None
    pattern = re.compile(rf"{re.escape(entry.name)}-\d{{8}}-{re.escape(entry.version)}\.bin")
    found = sorted(p for p in folder.glob(f"{entry.name}-*-{entry.version}.bin")
                   if pattern.fullmatch(p.name))  # fmt: skip
    return found[-1] if found else None


def _recorded(cache: Path, name: str) -> str | None:
    """The sha256 recorded when an unpinned file was first downloaded (trust on first use)."""
    sums = cache / "checksums.json"
    if not sums.is_file():
        return None
    try:
        value = json.loads(sums.read_text()).get(name)
    except (ValueError, AttributeError):
        raise FirmwareUnavailable(
            f"{sums} is damaged (not a JSON object): delete it and fetch again"
        ) from None
    return value if isinstance(value, str) else None


def selector(firmware_dir: str | Path | None = None, *, download: bool = True) -> FirmwareSelector:
    """The selector for a command line or a pytest run: --firmware-dir, else
    HARNESS_FIRMWARE_DIR, then the user cache, then micropython.org."""
    local = Path(firmware_dir) if firmware_dir else paths.local_firmware_dir()
    local = local.resolve() if local else None
    return FirmwareSelector(local=local, download=download)
