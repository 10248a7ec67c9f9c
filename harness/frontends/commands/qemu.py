"""`harness qemu install`: the pinned Espressif QEMU, where ESP-IDF puts it; with `--wifi`,
the Wi-Fi QEMU built from its pinned source beside it (harness.sources.qemubuild)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ...errors import HarnessError

if TYPE_CHECKING:
    from .options import Subparsers


def register(sub: Subparsers) -> None:
    qemu = sub.add_parser("qemu", help="Espressif's QEMU").add_subparsers(
        dest="action", required=True
    )
    install = qemu.add_parser("install", help="download the pinned release where ESP-IDF puts it")
    install.add_argument("--version", default=None, help="a pinned version (default: newest)")
    install.add_argument("--url", help="a mirror of the release archive, or with --wifi of "
                         "the source archive (needs --sha256)")  # fmt: skip
    install.add_argument("--sha256", help="expected sha256 of the archive at --url")
    install.add_argument("--wifi", action="store_true",
                         help="build the Wi-Fi QEMU (esp32-open-mac's tree at its pinned "
                         "commit, docs/network.md) from source: minutes")  # fmt: skip
    install.set_defaults(func=cmd_qemu_install)


def cmd_qemu_install(args: argparse.Namespace) -> int:
    from ...sources import downloads

    if args.url and not args.sha256:
        raise HarnessError("--url needs --sha256: a download is only installed when verified")
    if args.wifi:
        return _install_wifi(args.url, args.sha256)
    binary, new = downloads.install_qemu(args.version, url=args.url, sha256=args.sha256)
    print(f"{'installed' if new else 'already installed'}: {binary}")
    return 0


def _install_wifi(url: str | None, sha256: str | None) -> int:
    from ...chips import DEFAULT
    from ...emulator.qemu import has_device
    from ...paths import idf_tools_dir
    from ...sources import qemubuild

    profile = DEFAULT.qemu
    assert profile is not None and profile.wifi is not None  # the ESP32's has one
    wifi, source = profile.wifi, qemubuild.WIFI
    prefix = idf_tools_dir() / wifi.tool / source.folder / "qemu"
    binary = prefix / "bin" / profile.binary
    if binary.is_file() and has_device(binary, wifi.device):
        print(f"already installed: {binary}")
        return 0
    if prefix.exists():
        raise HarnessError(f"{prefix} is there but has no working {binary.name} with the "
                           f"{wifi.device} model: remove it and run this again")  # fmt: skip
    print(f"building {source.name}'s QEMU at {source.commit[:10]} from "
          f"{url or source.git} into {prefix}: several minutes", flush=True)  # fmt: skip
    try:
        seconds = qemubuild.build(source, prefix, qemubuild.Origin(url, sha256))
    except qemubuild.BuildError as exc:
        raise HarnessError(str(exc)) from None
    print(f"installed: {binary} (built in {seconds / 60:.1f} min); Espressif's release stays "
          f"the QEMU of every cell without a network")  # fmt: skip
    return 0
