"""`harness` command line: boot, image build, inspect, run, repro, provision, downloads.

Every user mistake ends as one `error: ...` line and a non-zero exit; SIGTERM and
Ctrl-C unwind through the same cleanup as a normal exit, so no QEMU is left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..emulator import policy
from ..errors import HarnessError, QemuNotFound
from ..flash import formats, images
from ..flash.inputs import read_input
from ..flash.size import FlashSize

if TYPE_CHECKING:
    from ..scenario.plan import Cell
    from ..sources.manifest import Manifest

WATCHDOG_HELP = (
    "the emulated timer-group watchdogs (default: off, as `idf.py qemu` runs; a scenario's "
    "own `watchdogs:` wins)"
)


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="a named image recipe (images/recipes/NAME.yaml: 4mb, "
                   "16mb, 4mb-ota, 16mb-ota); the options below change it")  # fmt: skip
    p.add_argument("--flash-size", help="2MB, 4MB, 8MB or 16MB (default: the firmware's own)")
    p.add_argument(
        "--layout",
        choices=images.LAYOUTS,
        help="keep the firmware's partition table, or convert it to two OTA slots",
    )
    p.add_argument("--resize", help="mp-image-tool-esp32 --resize (default vfs=0 when growing)")
    p.add_argument("--app", type=Path, help="app image to write into the first app slot")
    p.add_argument(
        "--vfs",
        action="append",
        default=[],
        metavar="SRC[:DEST]",
        help="file or folder to put into MicroPython's filesystem (repeatable)",
    )


def recipe_from(args: argparse.Namespace, firmware: Path) -> images.Recipe:
    vfs = []
    for item in args.vfs:
        src, _, dst = item.partition(":")
        vfs.append((Path(src), dst or "/" + Path(src).name))
    if args.recipe:
        from ..flash import recipes  # pydantic: only when a named recipe is asked for

        recipe = recipes.find(args.recipe, recipes.search_path(Path.cwd())).spec.recipe(firmware)
    else:
        recipe = images.Recipe(firmware)
    changes: dict[str, object] = {"app": args.app, "vfs_files": tuple(vfs)}
    if args.flash_size:
        changes["flash_size"] = FlashSize.emulated(args.flash_size)
    if args.layout:
        changes["layout"] = args.layout
    if args.resize:
        changes["resize"] = args.resize
    return dataclasses.replace(recipe, **changes)  # type: ignore[arg-type]


def image_for(args: argparse.Namespace, path: Path) -> Path:
    """A whole flash image boots as it is; anything else is built from a recipe."""
    data = read_input(path)
    untouched = not (args.recipe or args.flash_size or args.layout or args.resize or args.app
                     or args.vfs)  # fmt: skip
    if untouched and formats.classify(data) == "flash":
        FlashSize.emulated(len(data))  # QEMU refuses other sizes; say so first
        return path
    return images.build(recipe_from(args, path))


def cmd_boot(args: argparse.Namespace) -> int:
    from . import boot

    return boot.run(args, image_for(args, args.image))


def cmd_otadata(args: argparse.Namespace) -> int:
    """An otadata partition image that makes the bootloader pick a slot (for esptool)."""
    data = read_input(args.image)
    flash = formats.as_flash(data)
    table = formats.parse_table(flash)
    part = table.otadata
    records = formats.read_otadata(flash, table)
    if part is None or records is None:
        raise HarnessError(f"{args.image} has no otadata partition (an OTA layout is needed)")
    if args.output.exists() and args.output.resolve() == args.image.resolve():
        raise HarnessError(f"-o {args.output} would overwrite the input: choose another name")
    current = flash[part.offset : part.end].ljust(part.size, b"\xff")
    content = bytearray(current)
    for sector, sector_data in formats.otadata_selecting(table, records, args.select,
                                                         args.state).items():  # fmt: skip
        content[sector * formats.SECTOR : (sector + 1) * formats.SECTOR] = sector_data
    state = formats.FlashState.of(flash[: part.offset] + bytes(content) + flash[part.end :])
    args.output.write_bytes(bytes(content))
    print(f"{args.output}: otadata selecting {state.boot.slot} ({', '.join(state.states())})")
    print(f"  write it at {part.offset:#x}: esptool write-flash {part.offset:#x} {args.output}")
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    recipe = recipe_from(args, args.firmware)
    out: Path = args.output
    if out.resolve() in {args.firmware.resolve(), *(p.resolve() for p in [args.app] if p)}:
        raise HarnessError(f"-o {out} would overwrite an input file: choose another name")
    built = images.build_image(recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(built.path.read_bytes())
    size = FlashSize.parse(out.stat().st_size)
    print(f"{out}: {size} flash image ({recipe.layout} layout) from {args.firmware.name}")
    print(f"  conversion: {built.conversion}")
    for note in built.notes:
        print(f"  note: {note}")
    if built.filesystem is not None:
        fs = built.filesystem
        how = "in the table" if fs.in_table else "made by MicroPython at boot"
        print(f"  filesystem: {fs.label} at {fs.offset:#x}, {fs.size:#x} bytes ({how})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..flash.inspect import examine
    from .inspect import render

    rep = examine(args.file)
    if args.json:
        print(json.dumps(rep.to_json(), indent=2))
    else:
        print(render(rep))
    if args.html:
        from .html import write_inspect

        print(f"html: {write_inspect(args.file, args.html)}")
    return 0


def _cells(args: argparse.Namespace) -> list[Cell]:
    """Every cell of the scenarios named, firmware chosen by the shared rule."""
    from ..scenario import format, plan
    from ..sources import manifest

    chooser = manifest.selector(args.firmware_dir)
    for given in args.firmware or []:
        if not manifest.ENTRY_ID.match(given) and not Path(given).is_file():
            raise HarnessError(f"--firmware {given}: no such file (or BOARD[-VARIANT]@VERSION)")
    loaded = format.load_all(args.scenarios)
    options = plan.RunOptions(
        flash_sizes=tuple(FlashSize.emulated(s) for s in args.flash_size or []),
        firmware=tuple(g if manifest.ENTRY_ID.match(g) else str(Path(g).resolve())
                       for g in args.firmware or []),
        watchdogs=policy.on_off(getattr(args, "watchdogs", None)),
        retries=getattr(args, "retries", 0),
    )  # fmt: skip
    cells = [c for s in loaded for c in plan.cells(s, chooser, options)]
    if not cells:
        raise HarnessError("no cells to run: no scenario has the flash size asked for")
    return cells


def cmd_run(args: argparse.Namespace) -> int:
    """Load every scenario and choose firmware first: bad input stops the run before a boot."""
    from ..emulator.qemu import find_qemu
    from ..scenario import plan, runner
    from ..sources import manifest
    from . import report

    cells = _cells(args)
    for cell in cells:  # a firmware the user named that cannot be had is an error, not a skip
        if isinstance(cell, plan.Skipped) and cell.unavailable:
            raise manifest.FirmwareUnavailable(cell.reason)
    find_qemu(args.qemu)  # fail before building anything when there is no QEMU
    progress = report.Progress(len(cells))
    results = []
    start = time.monotonic()
    with progress.running():
        for cell in cells:
            result = runner.run_cell(cell, runner.Setup(args.artifacts, args.qemu), progress.step)
            progress.result(result)
            results.append(result)
    print(report.summary(results, time.monotonic() - start))
    for line in report.unpinned_lines(results):
        print(line)
    if args.junit:
        report.junit(results, args.junit)
    print(f"report: {html_report(args.artifacts, [Path(r.artifacts) for r in results])}")
    failed = any(r.status == "failed" for r in results)
    passed = any(r.status == "passed" for r in results)
    return 1 if failed or not passed else 0


def cmd_provision(args: argparse.Namespace) -> int:
    """What the scenarios need, got or refused in one line: firmware, then QEMU."""
    from ..emulator.qemu import find_qemu
    from ..scenario.plan import Skipped
    from ..sources import downloads, manifest

    cells = _cells(args)
    seen: set[Path] = set()
    for cell in cells:
        if isinstance(cell, Skipped) and cell.firmware is None:
            raise manifest.FirmwareUnavailable(cell.reason)
        if cell.firmware is not None and cell.firmware.path not in seen:
            seen.add(cell.firmware.path)
            pin = (
                "sha256 pinned"
                if cell.firmware.pinned and cell.firmware.entry
                else (
                    "unpinned: sha256 recorded on first download"
                    if cell.firmware.entry
                    else "a path"
                )
            )
            print(f"firmware: {cell.firmware.path} ({cell.firmware.origin}, {pin})")
    try:
        qemu = find_qemu(args.qemu)
        print(f"qemu: {qemu}")
    except QemuNotFound:
        if args.qemu:
            raise
        try:
            binary, _ = downloads.install_qemu()
        except HarnessError as exc:
            raise QemuNotFound(
                f"no qemu-system-xtensa with the esp32 machine, and installing Espressif's "
                f"{downloads.QEMU_VERSION} failed: {exc}"
            ) from None
        print(f"qemu: {binary} (installed)")
    return 0


def cmd_repro(args: argparse.Namespace) -> int:
    from ..emulator.qemu import find_qemu
    from . import repro

    request = repro.Request(
        args.firmware, args.update, FlashSize.emulated(args.flash_size) if args.flash_size
        else None, args.layout, args.command, args.device_lib, tuple(args.expect), args.method,
        power_cut=_sweep_points(args.power_cut) if args.power_cut else None,
    )  # fmt: skip
    repro.check(request, args.save)
    find_qemu(args.qemu)
    result = repro.run(request, args.save, args.artifacts, args.qemu)
    print(result.text)
    return result.exit_code


def _sweep_points(text: str) -> int:
    """`sweep:20` (or `20`): how many cut points to spread over the update."""
    value = text.removeprefix("sweep:")
    if not value.isdigit() or int(value) < 1:
        raise HarnessError(f"--power-cut {text}: give sweep:N, N cut points (e.g. sweep:20)")
    return int(value)


def cmd_qemu_install(args: argparse.Namespace) -> int:
    from ..sources import downloads

    if args.url and not args.sha256:
        raise HarnessError("--url needs --sha256: a download is only installed when verified")
    version = args.version or downloads.QEMU_VERSION
    binary, new = downloads.install_qemu(version, url=args.url, sha256=args.sha256)
    print(f"{'installed' if new else 'already installed'}: {binary}")
    return 0


def cmd_firmware_fetch(args: argparse.Namespace) -> int:
    from .. import paths
    from ..sources import downloads, manifest

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
    from ..sources import manifest

    entries = [e for e in manifest.load_manifest().firmware
               if (e.nightly or not args.nightly) and (e.pinned or not args.pinned)]  # fmt: skip
    if args.only:
        entries = manifest.narrowed(entries, args.only)
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


def check_latest(known: Manifest, base_url: str | None) -> int:
    """One line: is a release out that the manifest does not know? 1 when there is."""
    from ..sources import downloads

    board = "ESP32_GENERIC"
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


def cmd_report(args: argparse.Namespace) -> int:
    from . import report

    if not args.artifacts.is_dir():
        raise HarnessError(f"{args.artifacts}: no such folder")
    if args.html:
        print(f"report: {html_report(args.artifacts, out=args.html)}")
        return 0
    print(report.markdown(args.artifacts))
    return 0


def html_report(artifacts: Path, cells: list[Path] | None = None, out: Path | None = None) -> Path:
    """The run's HTML page (harness.frontends.html)."""
    from .html import write_report

    return write_report(artifacts, out, cells=cells)


def cmd_schema(args: argparse.Namespace) -> int:
    from ..scenario import format, reference

    if args.steps:
        print(reference.steps_markdown())
    else:
        print(json.dumps(format.json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", description="ESP32 MicroPython OTA and boot failures, reproduced in QEMU"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    boot = sub.add_parser("boot", help="boot a firmware or flash image in QEMU")
    boot.add_argument("image", type=Path, help="firmware .bin (at 0x1000) or whole flash image")
    _recipe_args(boot)
    boot.add_argument("--exec", help="run this code at the REPL, print its output, exit")
    boot.add_argument("--qemu", help="path to Espressif's qemu-system-xtensa")
    boot.add_argument(
        "--psram",
        choices=["auto", "on", "off"],
        default="auto",
        help="give the machine 4MB PSRAM (auto: when it is a SPIRAM build)",
    )
    boot.add_argument("--timeout", type=float, default=60.0, help="seconds for boot and --exec")
    boot.add_argument("--watchdogs", choices=["on", "off"], help=WATCHDOG_HELP)
    boot.add_argument(
        "--pty",
        action="store_true",
        help="serve the UART as a pty and an RFC2217 port for your own tools until Ctrl-C",
    )
    boot.add_argument(
        "--download", action="store_true", help="with --pty: start in download mode (GPIO0 low)"
    )
    boot.add_argument("--artifacts", type=Path, help="keep serial log, QEMU command line, flash")
    boot.set_defaults(func=cmd_boot)

    image = sub.add_parser("image", help="flash images").add_subparsers(
        dest="action", required=True
    )
    build = image.add_parser("build", help="build a flash image of an exact size")
    build.add_argument("firmware", type=Path)
    _recipe_args(build)
    build.add_argument("-o", "--output", type=Path, required=True)
    build.set_defaults(func=cmd_image_build)

    def scenario_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "scenarios", nargs="+", type=Path, metavar="SCENARIO", help="files, or folders of them"
        )
        p.add_argument(
            "--flash-size", action="append", help="only these sizes of each matrix (repeatable)"
        )
        p.add_argument(
            "--firmware", action="append", metavar="FILE|BOARD[-VARIANT]@VERSION",
            help="use this firmware in every cell: a file, or a manifest entry (repeatable)",
        )  # fmt: skip
        p.add_argument("--firmware-dir", type=Path, help="a folder of firmware files, looked in "
                       "before the cache (default: HARNESS_FIRMWARE_DIR)")  # fmt: skip
        p.add_argument("--qemu", help="path to Espressif's qemu-system-xtensa")

    run = sub.add_parser("run", help="run scenario files (exit 0 only when none fails)")
    scenario_args(run)
    run.add_argument("--junit", type=Path, help="write JUnit XML here")
    run.add_argument(
        "--artifacts", type=Path, default=Path("artifacts"), help="per-cell evidence folders"
    )
    run.add_argument(
        "--retries", type=int, default=0, help="rerun a cell whose QEMU crashed itself (listed)"
    )
    run.add_argument("--watchdogs", choices=["on", "off"], help=WATCHDOG_HELP)
    run.set_defaults(func=cmd_run)

    provision = sub.add_parser(
        "provision", help="get the firmware and QEMU that scenarios need (one line if not)"
    )
    scenario_args(provision)
    provision.set_defaults(func=cmd_provision)

    repro = sub.add_parser("repro", help="reproduce a bug report: their firmware, their update")
    repro.add_argument("--firmware", type=Path, required=True, help="the firmware on the device")
    repro.add_argument("--update", type=Path, required=True, help="the file sent by OTA")
    repro.add_argument("--flash-size", help="e.g. 16MB (converted with -f 16M --resize vfs=0)")
    repro.add_argument("--layout", choices=["keep", "ota"],
                       help="default: keep, or OTA slots when the firmware has none")  # fmt: skip
    repro.add_argument("--method", choices=["staged", "harness"], default="staged",
                       help="without --command: how the update gets into the slot; staged "
                       "(default): written into the flash file before the boot, the device "
                       "runs set_boot() and reboots; harness: the device writes it")  # fmt: skip
    repro.add_argument("--command", help="their REPL line; the update is /fw.bin in the vfs")
    repro.add_argument("--device-lib", type=Path, help="their device library folder (-> /lib)")
    repro.add_argument("--expect", action="append", default=[], help="text that shows the bug")
    repro.add_argument("--power-cut", metavar="sweep:N",
                       help="cut the power at N points of the update's flash writes (the "
                            "device writes it); verdict: survives every cut, or the first "
                            "point that bricks")  # fmt: skip
    repro.add_argument("--save", type=Path, help="write the reproduction as a scenario file")
    repro.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    repro.add_argument("--qemu", help="path to Espressif's qemu-system-xtensa")
    repro.set_defaults(func=cmd_repro)
    repro.epilog = (
        "exit 0: reproduced (or ran, without --expect); 1: not reproduced; 2: could not run. "
        "With --power-cut: 0 survives every cut; 1 a cut point failed; 2 could not run"
    )

    qemu = sub.add_parser("qemu", help="Espressif's QEMU").add_subparsers(
        dest="action", required=True
    )
    install = qemu.add_parser("install", help="download the pinned release where ESP-IDF puts it")
    install.add_argument("--version", default=None, help="a pinned version (default: newest)")
    install.add_argument("--url", help="a mirror of the release archive (needs --sha256)")
    install.add_argument("--sha256", help="expected sha256 of the archive at --url")
    install.set_defaults(func=cmd_qemu_install)

    fw = sub.add_parser("firmware", help="official MicroPython firmware").add_subparsers(
        dest="action", required=True
    )
    fetch = fw.add_parser("fetch", help="download from micropython.org (or the folder "
                          "HARNESS_FIRMWARE_MIRROR names) into the cache")  # fmt: skip
    fetch.add_argument("name", metavar="BOARD[-VARIANT][@VERSION]",
                       help="e.g. ESP32_GENERIC-OTA, or ESP32_GENERIC-OTA@v1.25.0")  # fmt: skip
    fetch.add_argument("version", nargs="?", help="e.g. v1.25.0")
    fetch.add_argument(
        "--cache",
        type=Path,
        help="download folder (default: HARNESS_FIRMWARE_CACHE or the user cache)",
    )
    fetch.add_argument("--base-url", help="a micropython.org mirror")
    fetch.set_defaults(func=cmd_firmware_fetch)
    listing = fw.add_parser("list", help="the firmware manifest (images/firmware.yaml)")
    listing.add_argument("--nightly", action="store_true", help="only the nightly releases")
    listing.add_argument("--pinned", action="store_true", help="only entries with a sha256")
    listing.add_argument("--only", metavar="RELEASES", help="only these of them: ids or "
                         "versions, e.g. 'v1.28.0 ESP32_GENERIC-OTA@v1.25.0'")  # fmt: skip
    listing.add_argument("--ids", action="store_true", help="entry ids, one per line")
    listing.add_argument("--json", action="store_true", help="entry ids as a JSON list")
    listing.add_argument("--check-latest", action="store_true", help="also read micropython."
                         "org's ESP32_GENERIC page and say if a release is newer than the "
                         "manifest (exit 1 if so; offline: says it could not check)")  # fmt: skip
    listing.add_argument("--base-url", help="a micropython.org mirror (--check-latest)")
    listing.set_defaults(func=cmd_firmware_list)

    rep = sub.add_parser("report", help="the results in an artifacts folder: a markdown "
                         "table, or (--html) the HTML report")  # fmt: skip
    rep.add_argument("artifacts", type=Path, help="an artifacts folder (merged ones too)")
    rep.add_argument("--html", type=Path, metavar="OUT.html",
                     help="write the HTML report of every cell in it here")  # fmt: skip
    rep.set_defaults(func=cmd_report)

    schema = sub.add_parser("schema", help="print the scenario file JSON Schema")
    schema.add_argument(
        "--steps",
        action="store_true",
        help="the step reference (markdown) instead, as docs/scenarios.md has it",
    )
    schema.set_defaults(func=cmd_schema)

    ota = sub.add_parser("otadata", help="an otadata image that selects a slot (for esptool)")
    ota.add_argument("image", type=Path, help="the firmware or flash image it is for")
    ota.add_argument("--select", required=True, metavar="SLOT", help="e.g. ota_1")
    ota.add_argument("--state", default="UNDEFINED", help="NEW, PENDING_VERIFY, VALID, ... "
                     "(default UNDEFINED, as set_boot() without rollback)")  # fmt: skip
    ota.add_argument("-o", "--output", type=Path, required=True)
    ota.set_defaults(func=cmd_otadata)

    insp = sub.add_parser("inspect", help="say what an image file is and what will boot")
    insp.add_argument("file", type=Path)
    insp.add_argument("--json", action="store_true", help="the stable JSON form")
    insp.add_argument("--html", type=Path, metavar="OUT.html",
                      help="also draw it: its partition map and where it would load")  # fmt: skip
    insp.set_defaults(func=cmd_inspect)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `with`, so QEMU is reaped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = build_parser().parse_args(argv)
    start = time.monotonic()
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except HarnessError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        detail = "\n".join(str(exc).splitlines()[1:])
        if detail:
            print(detail, file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `harness inspect FILE | head -1`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 128 + signal.SIGPIPE  # what a shell shows for a tool the pipe ended
    except OSError as exc:  # the machine's side: a full disk, a folder we may not write
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where} (check free space and permissions)",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.monotonic() - start:.1f}s", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
