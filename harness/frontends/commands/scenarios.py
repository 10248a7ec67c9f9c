"""`harness run` and `harness provision`: scenario files, planned by the shared rules."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ... import chips
from ...errors import HarnessError, QemuNotFound
from ...flash.size import FlashSize
from . import options

if TYPE_CHECKING:
    from ...chips import Chip
    from ...scenario.plan import Cell
    from ...sources import manifest
    from .options import Subparsers

SCENARIOS = argparse.ArgumentParser(add_help=False, parents=[options.QEMU])
SCENARIOS.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO",
                       help="files, or folders of them")  # fmt: skip
SCENARIOS.add_argument("--flash-size", action="append",
                       help="only these sizes of each matrix (repeatable)")  # fmt: skip
SCENARIOS.add_argument("--firmware", action="append", metavar="FILE|BOARD[-VARIANT]@VERSION",
                       help="use this firmware in every cell: a file, or a manifest entry "
                       "(repeatable)")  # fmt: skip
SCENARIOS.add_argument("--update", action="append", metavar="FILE|BOARD[-VARIANT]@VERSION",
                       help="the release every cell of a matrix with an update axis is "
                       "updated to, replacing that axis (repeatable)")  # fmt: skip
SCENARIOS.add_argument("--firmware-dir", type=Path, help="a folder of firmware files, looked "
                       "in before the cache (default: HARNESS_FIRMWARE_DIR)")  # fmt: skip


def register(sub: Subparsers) -> None:
    run = sub.add_parser("run", help="run scenario files (exit 0 only when none fails)",
                         parents=[SCENARIOS, options.WATCHDOGS])  # fmt: skip
    run.add_argument("--junit", type=Path, help="write JUnit XML here")
    run.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                     help="per-cell evidence folders")  # fmt: skip
    run.add_argument("--retries", type=int, default=0,
                     help="rerun a cell whose QEMU crashed itself (listed)")  # fmt: skip
    run.set_defaults(func=cmd_run)
    provision = sub.add_parser("provision", parents=[SCENARIOS], help="get the firmware and "
                               "QEMU that scenarios need (one line if not)")  # fmt: skip
    provision.set_defaults(func=cmd_provision)


def cells(args: argparse.Namespace) -> list[Cell]:
    """Every cell of the scenarios named, firmware chosen by the shared rule."""
    from ...emulator import policy
    from ...scenario import format, plan
    from ...sources import manifest

    chooser = manifest.selector(args.firmware_dir)
    for option, named in (("--firmware", args.firmware), ("--update", args.update)):
        for given in named or []:
            if not manifest.ENTRY_ID.match(given) and not Path(given).is_file():
                raise HarnessError(f"{option} {given}: no such file (or "
                                   "BOARD[-VARIANT]@VERSION)")  # fmt: skip
    loaded = format.load_all(args.scenarios)
    run_options = plan.RunOptions(
        flash_sizes=tuple(FlashSize.emulated(s) for s in args.flash_size or []),
        firmware=_named(args.firmware),
        updates=_named(args.update),
        watchdogs=policy.on_off(getattr(args, "watchdogs", None)),
        retries=getattr(args, "retries", 0),
    )  # fmt: skip
    found = [c for s in loaded for c in plan.cells(s, chooser, run_options)]
    if not found:
        raise HarnessError("no cells to run: no scenario has the flash size asked for")
    return found


def _named(given: list[str] | None) -> tuple[str, ...]:
    """Manifest entries as they are, files as absolute paths."""
    from ...sources import manifest

    return tuple(g if manifest.ENTRY_ID.match(g) else str(Path(g).resolve()) for g in given or [])


def cmd_run(args: argparse.Namespace) -> int:
    """Load every scenario and choose firmware first: bad input stops the run before a boot."""
    from ...emulator.qemu import find_qemu
    from ...scenario import plan, runner
    from ...sources import manifest
    from .. import report
    from .report import html_report

    planned = cells(args)
    for cell in planned:  # a firmware the user named that cannot be had is an error, not a skip
        if isinstance(cell, plan.Skipped) and cell.unavailable:
            raise manifest.FirmwareUnavailable(cell.reason)
    for chip in _chips(planned):  # fail before building anything when there is no QEMU
        find_qemu(args.qemu, chip)
    progress = report.Progress(len(planned))
    results = []
    start = time.monotonic()
    with progress.running():
        for cell in planned:
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
    from ...emulator.qemu import find_qemu
    from ...scenario.plan import CellPlan, Skipped
    from ...sources import downloads, manifest

    seen: set[Path] = set()
    planned = cells(args)
    for cell in planned:
        if isinstance(cell, Skipped) and cell.firmware is None:
            raise manifest.FirmwareUnavailable(cell.reason)
        if isinstance(cell, Skipped) and cell.unavailable:  # an update that cannot be had
            raise manifest.FirmwareUnavailable(cell.reason)
        update = cell.update if isinstance(cell, CellPlan) else None
        for fw in (cell.firmware, update):
            if fw is not None and fw.path not in seen:
                seen.add(fw.path)
                print(f"firmware: {fw.path} ({fw.origin}, {_pin(fw)})")
    for chip in _chips(planned):
        try:
            print(f"qemu: {find_qemu(args.qemu, chip)}")
        except QemuNotFound as exc:
            if args.qemu:
                raise
            try:
                binary, _ = downloads.install_qemu(chip=chip)
            except HarnessError as failed:
                raise QemuNotFound(f"{str(exc).split(';')[0]}, and installing Espressif's "
                                   f"pinned QEMU failed: {failed}") from None  # fmt: skip
            print(f"qemu: {binary} (installed)")
    return 0


def _chips(planned: list[Cell]) -> list[Chip]:
    """The chips the cells run on (their policies'), each once; the default one when
    every cell is skipped."""
    from ...scenario.plan import CellPlan

    found = [c.policy.chip for c in planned if isinstance(c, CellPlan)]
    return list(dict.fromkeys(found)) or [chips.DEFAULT]


def _pin(firmware: manifest.Firmware) -> str:
    if firmware.pinned and firmware.entry:
        return "sha256 pinned"
    return "unpinned: sha256 recorded on first download" if firmware.entry else "a path"
