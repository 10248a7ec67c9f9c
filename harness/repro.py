"""`harness repro`: a reporter's two files in, a verdict and a committable scenario out.

The reproduction is itself a scenario (boot, OTA of their update, observe), run by the
same engine as the library, so what `--save` writes is exactly what was run, plus the
outcome it observed as assertions: the bootloader's E/W lines and the partition that
booted. The saved file then guards the behaviour in `make test-16mb`.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import images, inspect, runner, scenario
from .errors import HarnessError

TIMESTAMP = re.compile(r"^[EW] \(\d+\) ")


@dataclass
class Request:
    firmware: Path
    update: Path
    flash_size: str | None = None
    layout: str = "keep"
    command: str | None = None
    device_lib: Path | None = None
    expect: tuple[str, ...] = ()


def scenario_data(req: Request, where: Path) -> dict[str, Any]:
    """The scenario that reproduces `req`, with paths relative to the folder `where`."""
    size = req.flash_size or images.size_name(
        images.header_flash_size(images._firmware_bytes(req.firmware))
    )
    ota: dict[str, Any] = {"payload": _rel(req.update, where)}
    if req.command:
        ota.update(method="library", command=req.command)
        if req.device_lib:
            ota["device_lib"] = _rel(req.device_lib, where)
    steps: list[dict[str, Any]] = [{"boot": "prompt"}, {"ota": ota}]
    if req.expect:
        steps.append({"expect": list(req.expect)})
    return {
        "title": f"{req.update.name} sent by OTA to {req.firmware.name} ({size})",
        "source": f"harness repro, {datetime.date.today().isoformat()}: add the report's link",
        "matrix": {"flash_size": [size], "firmware": [_rel(req.firmware, where)]},
        "image": {"layout": req.layout},
        "steps": steps,
    }


def _rel(path: Path, where: Path) -> str:
    """`${scenario_dir}/..` form, so the saved file works from any checkout location."""
    return "${scenario_dir}/" + os.path.relpath(path.resolve(), where.resolve())


def check(req: Request, save: Path | None) -> None:
    """Bad input, before anything boots: missing or empty files, a --save that exists."""
    for path in (req.firmware, req.update):
        inspect.read_input(path)
    images._firmware_bytes(req.firmware)  # a firmware image, for an esp32
    if save is not None and save.exists():
        raise HarnessError(f"{save} exists: give --save a new file name (it is never overwritten)")


def run(req: Request, save: Path | None, artifacts: Path, qemu: str | None) -> tuple[str, bool]:
    """Run the reproduction; return (verdict text, reproduced)."""
    check(req, save)
    where = (save.parent if save else artifacts).resolve()
    where.mkdir(parents=True, exist_ok=True)
    data = scenario_data(req, where)
    draft = where / (save.name if save else ".repro.yaml")
    _write(draft, data)
    try:
        loaded = scenario.load(draft)
        cell = loaded.cells(req.firmware.parent)[0]
        result = runner.run_cell(cell, artifacts=artifacts, qemu=qemu)
    finally:
        draft.unlink(missing_ok=True)
    ota_detail = next((s.detail for s in result.timeline if s.step == "ota"), {})
    lines = [TIMESTAMP.sub("", line) for line in ota_detail.get("bootloader_lines", [])]
    booted = ota_detail.get("booted") or result.booted
    target = ota_detail.get("target")
    reproduced = result.status == "passed" and (bool(req.expect) or booted != target)
    text = verdict(req, result, ota_detail, lines, reproduced)
    if save is not None and result.status == "passed":
        steps = data["steps"]
        if not req.expect and lines:
            steps.append({"expect": lines})
        if booted:
            steps.append({"assert_booted": booted})
        _write(save, data)
        scenario.load(save)  # what was written must load
        text += f"\nsaved:     {save} (runs in make test-{data['matrix']['flash_size'][0].lower()})"
    return text, reproduced


def verdict(
    req: Request,
    result: runner.CellResult,
    ota: dict[str, Any],
    lines: list[str],
    reproduced: bool,
) -> str:
    rep = inspect.report(req.update)
    out = [f"== harness repro: {req.update.name} -> {req.firmware.name} =="]
    if result.status != "passed":
        out.append(f"reproduced: no, the run failed: {result.message.splitlines()[0]}")
    elif req.expect:
        out.append(f"reproduced: yes, serial output showed {', '.join(map(repr, req.expect))}")
    else:
        word = "yes" if reproduced else "no"
        out.append(f"reproduced: {word}, the update was written to {ota.get('target')} "
                   f"and {ota.get('booted')} booted")  # fmt: skip
    for line in lines:
        out.append(f"  | {line}")
    if ota:
        before = ota.get("before") or {}
        after = ota.get("after") or {}
        out.append(f"booted:    {ota.get('booted')} (update written to {ota.get('target')}, "
                   f"set_boot: {ota.get('set_boot_error') or 'ok'})")  # fmt: skip
        out.append(f"otadata:   before {_states(before)}, after {_states(after)}")
    out.append(f"inspect:   {rep['ota_payload']['verdict']}")
    hint = fix(req.update, rep)
    if hint:
        out.append(f"fix:       {hint}")
    out.append(f"artifacts: {result.artifacts}")
    return "\n".join(out)


def fix(path: Path, rep: dict[str, Any]) -> str | None:
    """What to do about the update file, where the file itself says it."""
    if rep["kind"] in ("firmware", "flash"):
        return (f"this is a full flash image; send the app image instead, e.g. "
                f"`mp-image-tool-esp32 {path.name} -x`")  # fmt: skip
    app = rep.get("app") or {}
    problems = "; ".join(app.get("problems") or [])
    if rep["kind"] == "app" and problems:
        return (f"the app image is damaged ({problems}): check the download's length and "
                "sha256 before set_boot()")  # fmt: skip
    return None


def _states(flash_state: dict[str, Any]) -> str:
    records = flash_state.get("otadata") or []
    return "[" + ", ".join(str(r.get("state")) for r in records) + "]"


def _write(path: Path, data: dict[str, Any]) -> None:
    header = "# Made by `harness repro`: fill in title and source; the steps are what ran.\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=100))
