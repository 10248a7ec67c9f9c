"""`harness firmware fetch|list`: official MicroPython firmware and the manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ... import chips
from ...errors import HarnessError

if TYPE_CHECKING:
    from ...sources.manifest import Manifest
    from .options import Subparsers


def register(sub: Subparsers) -> None:
    fw = sub.add_parser("firmware", help="official MicroPython firmware").add_subparsers(
        dest="action", required=True
    )
    fetch = fw.add_parser("fetch", help="download from micropython.org (or the folder "
                          "HARNESS_FIRMWARE_MIRROR names) into the cache")  # fmt: skip
    fetch.add_argument("name", metavar="BOARD[-VARIANT][@VERSION]",
                       help="e.g. ESP32_GENERIC-OTA, or ESP32_GENERIC-OTA@v1.25.0")  # fmt: skip
    fetch.add_argument("version", nargs="?", help="e.g. v1.25.0")
    fetch.add_argument("--cache", type=Path, help="download folder (default: "
                       "HARNESS_FIRMWARE_CACHE or the user cache)")  # fmt: skip
    fetch.add_argument("--base-url", help="a micropython.org mirror")
    fetch.set_defaults(func=cmd_firmware_fetch)
    listing = fw.add_parser("list", help="the firmware manifest (images/firmware.yaml)")
    listing.add_argument("--nightly", action="store_true", help="only the nightly releases")
    listing.add_argument("--pinned", action="store_true", help="only entries with a sha256")
    listing.add_argument("--only", metavar="RELEASES", help="only these of them: ids or "
                         "versions, e.g. 'v1.28.0 ESP32_GENERIC-OTA@v1.25.0'")  # fmt: skip
    listing.add_argument("--at-hand", action="store_true", help="only entries whose file is "
                         "here: the local folder (HARNESS_FIRMWARE_DIR) or the cache, sha256 "
                         "checked; nothing is downloaded")  # fmt: skip
    listing.add_argument("--ids", action="store_true", help="entry ids, one per line")
    listing.add_argument("--json", action="store_true", help="entry ids as a JSON list")
    listing.add_argument("--check-latest", action="store_true", help="also read micropython."
                         f"org's {chips.DEFAULT.board} page and say if a release is newer "
                         "than the manifest (exit 1 if so; offline: says it could not "
                         "check)")  # fmt: skip
    listing.add_argument("--base-url", help="a micropython.org mirror (--check-latest)")
    listing.set_defaults(func=cmd_firmware_list)


def cmd_firmware_fetch(args: argparse.Namespace) -> int:
    from ... import paths
    from ...sources import downloads, manifest

    name, _, version = args.name.partition("@")
    version = version or args.version
    if not version:
        raise HarnessError(f"give a version: `harness firmware fetch {name} v1.25.0`")
    entry = manifest.load_manifest().get(f"{name}@{version}")
    wanted = downloads.Wanted(name, version, entry.file if entry else None,
                              entry.sha256 if entry else None)  # fmt: skip
    cache = args.cache or paths.firmware_cache()
    path, _ = downloads.fetch_firmware(wanted, cache=cache, base_url=args.base_url)
    print(path)
    return 0


def cmd_firmware_list(args: argparse.Namespace) -> int:
    from ...sources import manifest

    entries = [e for e in manifest.load_manifest().firmware
               if (e.nightly or not args.nightly) and (e.pinned or not args.pinned)]  # fmt: skip
    if args.only:
        entries = manifest.narrowed(entries, args.only)
    if args.at_hand:
        entries = [e for e in entries if _at_hand(e.id)]
    if args.json:
        print(json.dumps([e.id for e in entries]))
    elif args.ids:
        print("\n".join(e.id for e in entries))
    else:
        for e in entries:
            pin = e.sha256 or "unpinned: sha256 recorded on first download"
            print(f"{e.id:<28} {e.file or '(file name from the download page)'}  {pin}")
    if args.check_latest:
        return check_latest(manifest.load_manifest(), args.base_url)
    return 0


def _at_hand(entry_id: str) -> bool:
    """The entry's file is in the local folder or the cache (and matches its sha256)."""
    from ...sources import manifest

    try:
        manifest.selector(download=False).entry(entry_id)
    except manifest.FirmwareUnavailable:
        return False
    return True


def check_latest(known: Manifest, base_url: str | None) -> int:
    """One line: is a release out that the manifest does not know? 1 when there is."""
    from ...sources import downloads

    board = chips.DEFAULT.board
    newest_known = max((e.version for e in known.firmware if e.board == board),
                       key=downloads.version_key)  # fmt: skip
    try:
        found = downloads.releases(board, base_url)
    except HarnessError as exc:
        print(f"latest release: could not check ({exc}); the manifest stops at {newest_known}")
        return 0
    newer = [v for v in found.versions if downloads.version_key(v) > downloads.version_key(
        newest_known)]  # fmt: skip
    if newer:
        print(f"latest release: {', '.join(newer)} on {found.page} is newer than the manifest "
              f"({newest_known}): add it to images/firmware.yaml")  # fmt: skip
        return 1
    print(f"latest release: the manifest is current ({newest_known}; newest on {found.page}: "
          f"{found.newest or 'none listed'})")  # fmt: skip
    return 0
