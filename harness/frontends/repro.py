"""`harness repro`: a reporter's two files in, a verdict and a committable scenario out.

The reproduction is itself a scenario (boot, OTA of their update, observe), made in
memory, planned and run by the same engine as the library, so what `--save` writes is
exactly what was run, plus the outcome it observed as assertions: the bootloader's E/W
lines and the partition that booted. The saved file then guards the behaviour in
`make test-16mb`. The verdict is read from the run's typed step results.

Exit codes (`Verdict.exit_code`): 0 reproduced (or, without `--expect`, the run
completed), 1 not reproduced (the expected text did not appear), 2 could not run
(bad input, or the run itself failed).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ..emulator.ota import OtaReport
from ..errors import HarnessError
from ..flash.firmware import FirmwareFacts
from ..flash.inputs import read_firmware, read_input
from ..flash.inspect import FileReport, examine
from ..flash.size import FlashSize
from ..scenario import format, plan, runner
from ..scenario.results import CellResult, FaultOutcome, StepRecord, fault_table, load_cell
from ..scenario.stepformats import (
    OTA_DOWNLOAD,
    OTA_HARNESS,
    OTA_LIBRARY,
    OTA_METHODS,
    OTA_STAGED,
)
from ..sources.manifest import FirmwareSelector
from .html import write_report

TIMESTAMP = re.compile(r"^[EW] \(\d+\) ")
REPRODUCED, NOT_REPRODUCED, COULD_NOT_RUN = 0, 1, 2


@dataclass(frozen=True)
class Request:
    firmware: Path
    update: Path
    flash_size: FlashSize | None = None
    layout: str | None = None  # None: keep, or OTA slots where the firmware has none
    command: str | None = None
    device_lib: Path | None = None
    expect: tuple[str, ...] = ()
    # without `command`: the update staged into the slot before the boot (what the
    # bootloader judges is the same bytes: tests/test_staged.py), or written by the device
    method: str = OTA_STAGED.name
    # sweep this many cut points over the update's writes, or `all`: every distinct state
    power_cut: int | Literal["all"] | None = None
    url: bool = False  # served over HTTP; the library's `command` downloads `${url}`


@dataclass(frozen=True)
class Verdict:
    text: str
    exit_code: int  # REPRODUCED, NOT_REPRODUCED or COULD_NOT_RUN


def scenario_data(req: Request, where: Path) -> dict[str, Any]:
    """The scenario that reproduces `req`, with paths relative to the folder `where`."""
    size = req.flash_size or FirmwareFacts.read(req.firmware).header_flash_size
    ota: dict[str, Any] = {"payload": _rel(req.update, where), "method": req.method}
    if req.command:
        method = OTA_DOWNLOAD if req.url else OTA_LIBRARY
        ota.update(method=method.name, command=req.command)
        if req.device_lib:
            ota["device_lib"] = _rel(req.device_lib, where)
    # over the network, the board joins the Wi-Fi QEMU's access point first
    head: list[dict[str, Any]] = [{"boot": "prompt"}, *([{"wifi": "connect"}] if req.url else [])]
    steps: list[dict[str, Any]] = [*head, {"ota": ota}]
    if req.power_cut:  # a staged update makes no emulated writes: the device writes it
        if not OTA_METHODS[ota["method"]].device_writes:
            ota["method"] = OTA_HARNESS.name
        steps = [*head, {"power_cut": {"ota": ota, "sweep": req.power_cut}}, {"boot": "prompt"}]
    if req.expect:
        steps.append({"expect": list(req.expect)})
    data: dict[str, Any] = {
        "title": f"{req.update.name} sent by OTA to {req.firmware.name} ({size})",
        "source": f"harness repro, {datetime.date.today().isoformat()}: add the report's link",
        "matrix": {"flash_size": [str(size)], "firmware": [_rel(req.firmware, where)]},
        "steps": steps,
    }
    if req.layout:
        data["image"] = {"layout": req.layout}
    return data


def _rel(path: Path, where: Path) -> str:
    """`${scenario_dir}/..` form, so the saved file works from any checkout location."""
    return "${scenario_dir}/" + os.path.relpath(path.resolve(), where.resolve())


def check(req: Request, save: Path | None) -> None:
    """Bad input, before anything boots: missing or empty files, a --save that exists, a
    download whose command does not name the URL."""
    if req.url and (req.command is None or "${url}" not in req.command):
        raise HarnessError("--url serves the update over HTTP for the device's library to "
                           "download: give --command with ${url} in it, e.g. --command "
                           "\"import ota.update; ota.update.from_file('${url}')\"")  # fmt: skip
    read_input(req.update)
    read_firmware(req.firmware)  # a firmware image, for an esp32
    if save is not None and save.exists():
        raise HarnessError(f"{save} exists: give --save a new file name (it is never overwritten)")


@dataclass(frozen=True)
class Outcome:
    """What the run came to, read from its typed step results."""

    result: CellResult
    ota: OtaReport | None
    lines: list[str]  # the bootloader's E/W lines during the update's reboot
    booted: str | None
    ran: bool  # every step passed, or only the final `expect` (the bug's text) failed
    missed: bool  # the final `expect` failed: the bug's text never showed


def run(req: Request, save: Path | None, artifacts: Path, qemu: str | None) -> Verdict:
    """Run the reproduction and judge it."""
    check(req, save)
    where = (save.parent if save else artifacts).resolve()
    where.mkdir(parents=True, exist_ok=True)
    data = scenario_data(req, where)
    scenario = format.from_data(data, where / (save.name if save else "repro.yaml"))
    cell = plan.cells(scenario, FirmwareSelector(download=False), plan.RunOptions())[0]
    if isinstance(cell, plan.CellPlan):
        runner.build(cell)  # an image that cannot be made: one line, before any boot
    ran = runner.run_cell(cell, runner.Setup(artifacts, qemu))
    result = load_cell(Path(ran.artifacts))  # judged from what the cell left, as reports are
    judged = _judge(req, result, data, save)
    page = write_report(artifacts, cells=[Path(result.artifacts)], title=f"harness repro: "
                        f"{req.update.name} -> {req.firmware.name}")  # fmt: skip
    return Verdict(f"{judged.text.rstrip()}\nreport:    {page}", judged.exit_code)


def _judge(req: Request, result: CellResult, data: dict[str, Any], save: Path | None) -> Verdict:
    if req.power_cut:
        return _cut_verdict(req, result, data, save)
    outcome = _outcome(result, bool(req.expect))
    reproduced = outcome.result.status == "passed" and (
        bool(req.expect) or (outcome.ota is not None and outcome.booted != outcome.ota.target)
    )
    text = verdict(req, outcome, reproduced)
    if save is not None and outcome.result.status == "passed":
        text += _save(save, data, req, outcome)
    if not outcome.ran:
        return Verdict(text, COULD_NOT_RUN)
    return Verdict(text, REPRODUCED if reproduced or not req.expect else NOT_REPRODUCED)


def _cut_verdict(
    req: Request, result: CellResult, data: dict[str, Any], save: Path | None
) -> Verdict:
    """Survives every cut (exit 0), or the first cut point that failed (1); 2 when the
    update itself could not be run and recorded."""
    out = [f"== harness repro --power-cut: {req.update.name} -> {req.firmware.name} =="]
    points = result.faults  # the power_cut's points: the only fault this scenario has
    booted = sorted({p.booted for p in points if p.booted})
    failed = [p for p in points if p.status == "failed"]
    kind = "classes" if req.power_cut == "all" else "cut points"
    if not points:
        out.append(f"survives every cut: could not run: {result.message.splitlines()[0]}")
        code = COULD_NOT_RUN
    elif failed:
        out.append(f"survives every cut: no; {len(failed)} of {len(points)} {kind} "
                   f"failed, the first {failed[0].point.label}: {failed[0].message}")  # fmt: skip
        code = NOT_REPRODUCED
    else:
        out.append(f"survives every cut: yes, {len(points)} {kind}, each powered on "
                   f"to {' or '.join(booted)}")  # fmt: skip
        code = REPRODUCED
    if points and points[0].coverage:
        out.append(f"coverage:  {points[0].coverage}")
    if req.power_cut == "all":
        out += [_class_verdict(o) for o in points]
    out.append(fault_table(points))
    out.append(f"artifacts: {result.artifacts}")
    if save is not None and code == REPRODUCED:
        data["steps"].append({"assert_booted": booted if len(booted) > 1 else booted[0]})
        out.append(_write(save, data).strip())
    return Verdict("\n".join(out), code)


def _class_verdict(o: FaultOutcome) -> str:
    """`class at 0/98 (95 states, operations 0-96): passed, booted ota_0`."""
    said = f": {o.message}" if o.message else ""
    return (f"  class at {o.point.short} ({o.point.covers or 'itself'}): {o.status}, "
            f"booted {o.booted or 'nothing'}{said}")  # fmt: skip


def _outcome(result: CellResult, expecting: bool) -> Outcome:
    ota = result.detail("ota", OtaReport)
    lines = [TIMESTAMP.sub("", line) for line in (ota.bootloader_lines if ota else [])]
    last: StepRecord[Any] | None = result.timeline[-1] if result.timeline else None
    missed = expecting and last is not None and last.step == "expect" and last.status == "failed"
    ran = result.status == "passed" or (missed and _only_failure_is(result, last))
    booted = (ota.booted if ota else None) or result.booted
    return Outcome(result, ota, lines, booted, ran, missed)


def _only_failure_is(result: CellResult, record: StepRecord[Any] | None) -> bool:
    return record is not None and all(r.status == "passed" for r in result.timeline[:-1])


def _save(save: Path, data: dict[str, Any], req: Request, outcome: Outcome) -> str:
    """Write what ran, with what it showed as assertions; the file must load as written."""
    steps = data["steps"]
    if not req.expect and outcome.lines:
        steps.append({"expect": outcome.lines})
    if outcome.booted:
        steps.append({"assert_booted": outcome.booted})
    return _write(save, data)


def _write(save: Path, data: dict[str, Any]) -> str:
    header = "# Made by `harness repro`: fill in title and source; the steps are what ran.\n"
    save.write_text(header + yaml.safe_dump(data, sort_keys=False, width=100))
    format.load(save)
    size = data["matrix"]["flash_size"][0].lower()
    if any("wifi" in step for step in data["steps"]):  # a networked cell
        return f"\nsaved:     {save} (runs in make test-network from scenarios/network/)"
    return f"\nsaved:     {save} (runs in make test-{size})"


def verdict(req: Request, outcome: Outcome, reproduced: bool) -> str:
    rep = examine(req.update)
    result, ota = outcome.result, outcome.ota
    out = [f"== harness repro: {req.update.name} -> {req.firmware.name} =="]
    if outcome.missed:
        out.append(f"reproduced: no, serial output never showed {', '.join(map(repr, req.expect))}")
    elif result.status != "passed":
        out.append(f"reproduced: could not run: {result.message.splitlines()[0]}")
    elif req.expect:
        out.append(f"reproduced: yes, serial output showed {', '.join(map(repr, req.expect))}")
    else:
        word = "yes" if reproduced else "no"
        target, booted = (ota.target, ota.booted) if ota else (None, None)
        out.append(f"reproduced: {word}, the update was written to {target} "
                   f"and {booted} booted")  # fmt: skip
    out += [f"  | {line}" for line in outcome.lines]
    if ota is not None:
        out.append(f"booted:    {ota.booted} (update written to {ota.target}, "
                   f"set_boot: {ota.set_boot_error or 'ok'})")  # fmt: skip
        out.append(f"otadata:   before {_states(ota.before)}, after {_states(ota.after)}")
    if result.image is not None:
        out.append(f"image:     {result.image.conversion}")
    out.append(f"inspect:   {rep.ota_payload.verdict}")
    hint = fix(req.update, rep)
    if hint:
        out.append(f"fix:       {hint}")
    out.append(f"artifacts: {result.artifacts}")
    return "\n".join(out)


def fix(path: Path, rep: FileReport) -> str | None:
    """What to do about the update file, where the file itself says it."""
    if rep.kind in ("firmware", "flash"):
        return (f"this is a full flash image; send the app image instead, e.g. "
                f"`mp-image-tool-esp32 {path.name} -x`")  # fmt: skip
    if rep.kind == "app" and rep.app is not None and rep.app.problems:
        return (f"the app image is damaged ({'; '.join(rep.app.problems)}): check the "
                "download's length and sha256 before set_boot()")  # fmt: skip
    return None


def _states(state: Any) -> str:
    return "[" + ", ".join(state.states() if state is not None else []) + "]"
