"""`harness qemu install`: the pinned Espressif QEMU, where ESP-IDF puts it."""

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
    install.add_argument("--url", help="a mirror of the release archive (needs --sha256)")
    install.add_argument("--sha256", help="expected sha256 of the archive at --url")
    install.set_defaults(func=cmd_qemu_install)


def cmd_qemu_install(args: argparse.Namespace) -> int:
    from ...sources import downloads

    if args.url and not args.sha256:
        raise HarnessError("--url needs --sha256: a download is only installed when verified")
    binary, new = downloads.install_qemu(args.version, url=args.url, sha256=args.sha256)
    print(f"{'installed' if new else 'already installed'}: {binary}")
    return 0
