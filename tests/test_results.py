"""A cell's artifacts, typed and versioned: written and read through harness.scenario.results.

No QEMU: the cells are written as the runner writes them (tests/cells.py), and the
console's record of a failed `not_expect` is made on a socket pair.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cells import REFUSED, ran, skipped

from harness import chips
from harness.emulator.console import Console, Forbidden, SerialLog, Watch
from harness.emulator.device import Boot
from harness.emulator.ota import OtaReport
from harness.emulator.stall import Diagnosis
from harness.errors import UnexpectedOutput
from harness.flash import formats
from harness.frontends.html import views
from harness.scenario import steps
from harness.scenario.results import (
    SCHEMA,
    ArtifactsError,
    Attempt,
    CellId,
    CellResult,
    attempt_folder,
    iter_cells,
    load_cell,
    load_timeline,
)

CELL = CellId(scenario="ota-full-image-into-slot", flash_size="16MB", firmware="v1.25.0")
GUARDED = CellId(scenario="guarded", flash_size="16MB", firmware="v1.25.0")


def test_a_cell_reads_back_whole_with_each_detail_typed_by_its_step(tmp_path: Path) -> None:
    written = ran(tmp_path, CELL)
    loaded = load_cell(tmp_path / CELL.name)
    assert loaded.model_dump() == written.model_dump()  # the timeline too
    assert [type(r.detail) for r in loaded.timeline] == [
        steps.BootDetail, OtaReport, steps.Matched, Boot
    ]  # fmt: skip
    ota = loaded.detail("ota", OtaReport)
    assert ota is not None and ota.target == "ota_1" and ota.bootloader_lines == REFUSED
    assert ota.after is not None and isinstance(ota.after, formats.FlashState)
    assert loaded.cell == CELL and loaded.name == "ota-full-image-into-slot[16mb-v1.25.0]"
    assert loaded.matched == REFUSED and loaded.violation is None
    assert loaded.folder == tmp_path / CELL.name
    assert load_timeline(loaded.folder) == loaded.timeline  # timeline.json: the same steps
    after = loaded.flash("after")
    assert after is not None and [(w.partition, w.offset) for w in after.written] == [
        ("ota_1", 0x190000)
    ]  # fmt: skip


def test_every_file_of_a_cell_says_its_schema(tmp_path: Path) -> None:
    ran(tmp_path, CELL)
    folder = tmp_path / CELL.name
    for name in ("result.json", "timeline.json", "flash-before.json", "flash-after.json"):
        assert json.loads((folder / name).read_text())["schema"] == SCHEMA == 3, name
    data = json.loads((folder / "flash-after.json").read_text())
    assert data["partitions"][3]["offset"] == "0x10000"  # offsets stay hex for people


def test_the_cell_id_is_fields_not_a_name_to_parse(tmp_path: Path) -> None:
    psram = CellId(scenario="psram-build", flash_size="4MB", firmware="v1.27.0", psram=False)
    assert psram.id == "4mb-v1.27.0-no-psram" and psram.release == "v1.27.0-no-psram"
    ran(tmp_path, psram)
    data = json.loads((tmp_path / psram.name / "result.json").read_text())
    assert data["cell"] == {"scenario": "psram-build", "flash_size": "4MB",
                            "firmware": "v1.27.0", "psram": False}  # fmt: skip
    assert data["name"] == "psram-build[4mb-v1.27.0-no-psram]"


PREVIOUS = {"name": "x[16mb-v1.25.0]", "status": "passed", "booted": "ota_0",
            "attempts": [{"attempt": 1, "status": "passed"}]}  # fmt: skip


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (PREVIOUS, "written in the format before schema 2 (no `schema` field)"),
        ({"schema": 2, "cell": {}, "cuts": []}, "written in schema 2"),  # before faults
        ({"schema": 4, "cell": {}}, "written in schema 4"),
    ],
    ids=["previous-format", "schema-2", "newer-schema"],
)
def test_a_folder_of_another_format_is_refused_in_one_line(
    tmp_path: Path, data: dict[str, object], said: str
) -> None:
    """`harness report`, markdown and HTML, names the file and its version and exits 2."""
    cell = tmp_path / "job" / "x[16mb-v1.25.0]"
    cell.mkdir(parents=True)
    (cell / "result.json").write_text(json.dumps(data))
    for extra in ([], ["--html", str(tmp_path / "r.html")]):
        run = subprocess.run([sys.executable, "-m", "harness", "report", str(tmp_path), *extra],
                             capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 2 and run.stdout == ""
        assert run.stderr == (f"error: {cell / 'result.json'}: {said}; this harness reads "
                              f"schema {SCHEMA}: run the cells again, or report them with the "
                              "harness that ran them\n")  # fmt: skip
    with pytest.raises(ArtifactsError, match=re.escape(said)):
        CellResult.load(cell / "result.json")


def test_a_damaged_result_is_one_line_naming_the_field(tmp_path: Path) -> None:
    ran(tmp_path, CELL)
    path = tmp_path / CELL.name / "result.json"
    data = json.loads(path.read_text())
    data["status"] = "fine"
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactsError) as info:
        CellResult.load(path)
    assert str(info.value).startswith(f"{path}: not a schema {SCHEMA} result.json: status: ")
    assert "\n" not in str(info.value)


def test_iter_cells_finds_cells_at_any_depth_and_never_an_attempt(tmp_path: Path) -> None:
    ran(tmp_path / "a", CELL)
    ran(tmp_path / "b" / "deeper", GUARDED)
    shutil.copytree(tmp_path / "a" / CELL.name, tmp_path / "a" / CELL.name / "attempt-2")
    skips = skipped(tmp_path / "c", "4MB", tmp_path)
    names = [c.name for c in iter_cells(tmp_path)]
    assert names == [CELL.name, GUARDED.name, *(s.name for s in skips)]
    assert skips[0].status == "skipped" and load_cell(skips[0].folder).message == skips[0].message


def test_the_console_records_the_rule_and_the_line_a_not_expect_failed_on(
    tmp_path: Path,
) -> None:
    """What the report marks comes from the console's own record, not from its wording."""
    ours, guest = socket.socketpair()
    with ours, guest:
        log = SerialLog(tmp_path / "serial.log")
        watch = Watch(lambda during, wait: None, lambda: Diagnosis(False, "no QEMU here"))
        console = Console(ours, log, watch, feed_log=True, chip=chips.DEFAULT)
        log.forbid(Forbidden("overlaps bootloader", re.compile("overlaps bootloader")), since=0)
        guest.sendall(("\r\n".join(["ets Jun  8 2016 00:22:57", *REFUSED]) + "\r\n").encode())
        with pytest.raises(UnexpectedOutput) as info:  # the moment the line arrives
            for _ in range(50):
                console.pump(0.2, during="step 3 `ota`")
        log.close()
    assert info.value.rule == "overlaps bootloader" and info.value.line == REFUSED[0]


def test_the_report_marks_the_lines_from_the_result_not_from_the_message(tmp_path: Path) -> None:
    """The matched lines and the line a `not_expect` failed on are fields of the result;
    the failure message may say anything."""
    ran(tmp_path, CELL)
    ran(tmp_path, GUARDED, guarded=True)
    report = views.load(tmp_path, tmp_path / "report.html")
    by_name = {c.name: c for c in report.cells}
    passed, failed = by_name[CELL.name], by_name[GUARDED.name]
    assert passed.serial is not None and failed.serial is not None
    assert [line.text for line in passed.serial.lines if line.kind == "match"] == REFUSED
    assert [line.text for line in failed.serial.lines if line.kind == "fail"] == REFUSED[:1]
    assert "overlaps" not in failed.message  # the old regex over the message found nothing
    after = dict(passed.maps)["after"][0]
    assert [m.label for m in after.marks] == ["firmware written into ota_1 (staged), 1.3 MB"]
    assert [b.name for b in after.boxes if b.booted] == ["ota_0"]
    assert (passed.column, passed.release, passed.size) == ("16mb-v1.25.0", "v1.25.0", "16MB")


def test_a_retried_cell_shows_the_attempt_its_verdict_is_from(tmp_path: Path) -> None:
    """The first attempt's files stay in the cell's folder, the second's in attempt-2/:
    the report draws the serial log and flash of the attempt that decided the cell."""
    result = ran(tmp_path, CELL)
    first, second = result.folder, attempt_folder(result.folder, 2)
    second.mkdir()
    for name in ("serial.log", "timeline.json", "flash-before.json", "flash-after.json"):
        shutil.copy(first / name, second / name)
        (first / name).unlink()
    (first / "serial.log").write_text("[    0.000] rst:0x7 (TG0WDT_SYS_RESET)\n")
    result.attempts = [Attempt(1, "failed", "WatchdogReset: ...", str(first)),
                       Attempt(2, "passed", "", str(second))]  # fmt: skip
    result.write(first)
    (view,) = views.load(tmp_path, tmp_path / "report.html").cells
    assert view.status == "retried" and view.serial is not None
    assert [line.text for line in view.serial.lines if line.kind == "match"] == REFUSED
    assert [when for when, _ in view.maps] == ["before", "after"]
    assert load_cell(first).last_run == second
