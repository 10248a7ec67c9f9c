"""Two releases in one cell: the update axis, `app-of:`, the pairs, and their errors."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import ImageError
from harness.flash import images
from harness.flash.firmware import ReleaseFacts
from harness.scenario import format as scenario
from harness.scenario import plan, runner
from harness.scenario.format import ScenarioError
from harness.sources.manifest import FirmwareSelector

ROOT = Path(__file__).parent.parent
UPGRADE = """\
title: t
matrix:
  flash_size: [4MB, 16MB]
  firmware: ["${firmware_dir}/ESP32_GENERIC-2023*-v1.20.0.bin",
             "${firmware_dir}/ESP32_GENERIC-OTA-*-v1.25.0.bin"]
  update: ["${firmware_dir}/ESP32_GENERIC-OTA-*-v1.25.0.bin",
           "${firmware_dir}/ESP32_GENERIC-*-v1.28.0.bin"]
  pairs: later
steps:
  - boot: prompt
  - ota: {payload: "app-of:${update}", method: staged}
  - repl: {code: "import os; print(os.uname().version)", match: "${update_version}"}
"""


def write(tmp_path: Path, text: str, name: str = "case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def cells(tmp_path: Path, firmware_dir: Path, text: str = UPGRADE, **options: object) -> list:
    loaded = scenario.load(write(tmp_path, text))
    chooser = FirmwareSelector(local=firmware_dir, download=False)
    return plan.cells(loaded, chooser, plan.RunOptions(**options))  # type: ignore[arg-type]


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        scenario.load(path)
    assert "\n" not in str(info.value)
    return str(info.value).removeprefix(f"{path}:")


def test_the_update_axis_pairs_releases_and_the_id_says_both(
    tmp_path: Path, firmware_dir: Path
) -> None:
    found = cells(tmp_path, firmware_dir)
    assert [c.name for c in found] == [
        "case[4mb-v1.20.0->v1.25.0]", "case[4mb-v1.20.0->v1.28.0]", "case[4mb-v1.25.0->v1.28.0]",
        "case[16mb-v1.20.0->v1.25.0]", "case[16mb-v1.20.0->v1.28.0]",
        "case[16mb-v1.25.0->v1.28.0]",
    ]  # fmt: skip
    cell = found[1]
    assert isinstance(cell, plan.CellPlan) and cell.update is not None
    assert cell.update.path.name == "ESP32_GENERIC-20260406-v1.28.0.bin"
    assert cell.variables["update_version"] == "v1.28.0"
    assert cell.variables["firmware_version"] == "v1.20.0"
    ota = cell.steps[1].args
    assert ota.payload == f"app-of:{cell.update.path}"  # type: ignore[attr-defined]
    # v1.20.0 stalls under load: the cell takes the host alone whichever release it runs
    assert cell.policy.alone


def test_pairs_all_and_earlier(tmp_path: Path, firmware_dir: Path) -> None:
    every = cells(tmp_path, firmware_dir, UPGRADE.replace("pairs: later", "pairs: all"))
    assert len(every) == 8 and "4mb-v1.25.0->v1.25.0" in [c.id for c in every]
    swapped = UPGRADE.replace("pairs: later", "pairs: earlier").replace("update:", "@@:")
    swapped = swapped.replace("firmware:", "update:").replace("@@:", "firmware:")
    assert [c.id for c in cells(tmp_path, firmware_dir, swapped)] == [
        "4mb-v1.25.0->v1.20.0", "4mb-v1.28.0->v1.20.0", "4mb-v1.28.0->v1.25.0",
        "16mb-v1.25.0->v1.20.0", "16mb-v1.28.0->v1.20.0", "16mb-v1.28.0->v1.25.0",
    ]  # fmt: skip


def test_options_replace_the_update_axis(tmp_path: Path, firmware_dir: Path) -> None:
    v127 = next(firmware_dir.glob("ESP32_GENERIC-*-v1.27.0.bin"))
    found = cells(tmp_path, firmware_dir, updates=(str(v127),))
    assert [c.id for c in found] == ["4mb-v1.20.0->v1.27.0", "4mb-v1.25.0->v1.27.0",
                                     "16mb-v1.20.0->v1.27.0", "16mb-v1.25.0->v1.27.0"]  # fmt: skip


def test_the_app_of_a_release_is_its_app_bin(tmp_path: Path, firmware_dir: Path) -> None:
    """The app extracted from the v1.22.0 OTA .bin is the release's own .app-bin, byte for
    byte; an .app-bin is its own app."""
    full = next(firmware_dir.glob("ESP32_GENERIC-OTA-*-v1.22.0.bin"))
    app_bin = next(firmware_dir.glob("ESP32_GENERIC-OTA-*-v1.22.0.app-bin"))
    assert images.app_of(full, tmp_path).read_bytes() == app_bin.read_bytes()
    assert images.app_of(app_bin, tmp_path) == app_bin
    assert ReleaseFacts.read(app_bin).version == "v1.22.0"
    assert ReleaseFacts.read(app_bin).idf_version == ReleaseFacts.read(full).idf_version


def test_app_of_a_file_that_is_not_firmware_is_one_line(tmp_path: Path, firmware_dir: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("release notes\n")
    with pytest.raises(ImageError, match=r"app-of .*notes.txt: not a firmware image \(unknown\)"):
        images.app_of(notes, tmp_path)
    text = UPGRADE.replace('"app-of:${update}"', '"app-of:notes.txt"')
    with pytest.raises(ScenarioError) as info:
        cells(tmp_path, firmware_dir, text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'case.yaml'}:11: app-of {notes}: not a firmware")


def test_an_unknown_update_entry_is_one_line(tmp_path: Path, firmware_dir: Path) -> None:
    text = UPGRADE.replace('"${firmware_dir}/ESP32_GENERIC-*-v1.28.0.bin"', "ESP32_GENERIC@v9.9.9")
    found = cells(tmp_path, firmware_dir, text.replace("pairs: later", "pairs: all"))
    skipped = [c for c in found if isinstance(c, plan.Skipped)]
    assert skipped and all(c.unavailable for c in skipped)
    assert skipped[0].reason.startswith("update: ESP32_GENERIC@v9.9.9 is not in the firmware "
                                        "manifest (it has: ")  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(tmp_path / "case.yaml"), "--firmware-dir",
         str(firmware_dir), "--artifacts", str(tmp_path / "art"), "--qemu", "/nonexistent"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.startswith("error: update: ESP32_GENERIC@v9.9.9 is not in the firmware")
    assert "Traceback" not in run.stderr


def test_update_variables_need_an_update_axis(tmp_path: Path) -> None:
    text = UPGRADE.replace("  update:", "  other:").replace("  pairs: later\n", "")
    text = "\n".join(line for line in text.splitlines() if "v1.28.0" not in line
                     and "other:" not in line) + "\n"  # fmt: skip
    assert "the matrix has no `update` axis" in load_error(tmp_path, text)
    plain = text.replace('"app-of:${update}"', "app").replace("${update_version}", "v")
    assert "matrix.pairs: needs an `update` axis" in load_error(
        tmp_path, plain.replace("steps:", "  pairs: later\nsteps:")
    )


def test_a_filesystem_made_at_first_boot_has_no_baked_files(tmp_path: Path) -> None:
    text = UPGRADE + "image:\n  filesystem: first-boot\n  vfs: {/a.txt: a.txt}\n"
    assert "a filesystem the firmware makes at first boot" in load_error(tmp_path, text)


def test_a_first_boot_filesystem_is_left_erased(tmp_path: Path, firmware_dir: Path) -> None:
    """The image carries no filesystem: the first release makes it at its first boot."""
    text = UPGRADE + "image:\n  filesystem: first-boot\n"
    cell = cells(tmp_path, firmware_dir, text)[0]
    assert isinstance(cell, plan.CellPlan) and not cell.image.recipe.format_vfs
    built = runner.build(cell, tmp_path / "cache")
    region = built.image.filesystem
    assert region is not None
    data = built.image.path.read_bytes()[region.offset : region.offset + region.size]
    assert data.count(0xFF) == len(data)


def test_payload_as_a_mapping(tmp_path: Path, firmware_dir: Path) -> None:
    text = UPGRADE.replace('"app-of:${update}"', '{app-of: "${update}"}')
    cell = cells(tmp_path, firmware_dir, text)[0]
    assert cell.steps[1].args.payload.startswith("app-of:/")  # type: ignore[union-attr]


def test_the_library_upgrade_scenarios_plan(firmware_dir: Path) -> None:
    """Every scenario of scenarios/upgrade/ plans (or skips with a reason) on the files."""
    chooser = FirmwareSelector(local=firmware_dir, download=False)
    for path in sorted((ROOT / "scenarios" / "upgrade").glob("*.yaml")):
        loaded = scenario.load(path)
        assert loaded.source and loaded.matrix.update, path
        for cell in plan.cells(loaded, chooser, plan.RunOptions()):
            assert "->" in cell.id
            assert isinstance(cell, plan.CellPlan) or cell.reason


def test_the_grid_has_every_pair_at_both_sizes(firmware_dir: Path) -> None:
    """`make test-upgrades` gives upgrade.yaml every release as both axes; `--flash-size`
    only narrows a matrix, so the scenario's own sizes are the grid's (a 16MB-only matrix
    once took the grid's 4MB half away)."""
    releases = tuple(str(next(firmware_dir.glob(f"*-{v}.bin"))) for v in ("v1.22.0", "v1.25.0"))
    loaded = scenario.load(ROOT / "scenarios" / "upgrade" / "upgrade.yaml")
    chooser = FirmwareSelector(local=firmware_dir, download=False)
    grid = plan.cells(loaded, chooser, plan.RunOptions(firmware=releases, updates=releases))
    assert sorted(c.id for c in grid) == ["16mb-v1.22.0->v1.25.0", "4mb-v1.22.0->v1.25.0"]


# -- the report's from x to view --------------------------------------------------------


def test_the_report_draws_each_upgrade_scenario_from_x_to(tmp_path: Path) -> None:
    """Rows are the release a board was flashed with, columns the update; each square is
    the cell's verdict and links to it; cells without an update keep the plain grid."""
    from cells import ran

    from harness.frontends.html import views, write_report
    from harness.scenario.results import CellId

    def cell(a: str, b: str | None) -> CellId:
        return CellId(scenario="upgrade" if b else "plain", flash_size="4MB", firmware=a, update=b)

    for a, b in (("v1.20.0", "v1.25.0"), ("v1.22.0", "v1.25.0"), ("v1.22.0", "v1.28.0")):
        ran(tmp_path, cell(a, b), guarded=b == "v1.28.0")
    ran(tmp_path, cell("v1.25.0", None))
    view = views.load(tmp_path, tmp_path / "report.html")
    assert view.rows == ["plain"] and view.columns == ["4mb-v1.25.0"]
    (grid,) = view.upgrades
    assert (grid.scenario, grid.size, grid.froms, grid.tos) == (
        "upgrade", "4MB", ["v1.20.0", "v1.22.0"], ["v1.25.0", "v1.28.0"])  # fmt: skip
    assert grid.at("v1.20.0", "v1.28.0") is None
    yes, no = grid.at("v1.22.0", "v1.25.0"), grid.at("v1.22.0", "v1.28.0")
    assert yes is not None and yes.verdict == "yes"
    assert no is not None and no.verdict == "no" and no.reason
    page = write_report(tmp_path).read_text()
    square = re.search(r'<table class="upgrades">.*?</table>', page, re.S)
    assert square is not None
    assert f'href="#{no.anchor}"' in square.group(0) and ">no<small>" in square.group(0)
    assert f'id="{no.anchor}"' in page  # the click opens the cell
    assert "updated to</dt><dd>v1.28.0" in page


# -- harness upgrade: bad input -----------------------------------------------------------


def upgrade_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", "upgrade", *args],
                          capture_output=True, text=True)  # fmt: skip


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (["--from", "nope.bin", "--to", "nope.bin"], "--from nope.bin: no such file"),
        (["--from", "{notes}", "--to", "{b}"], "is not an ESP32 firmware image (unknown)"),
        (["--from", "{b}", "--to", "{notes}"], "notes.txt: not a firmware image (unknown)"),
        (["--from", "{b}", "--to", "{b}", "--command", "x"], "--device-lib and --command go "
                                                           "together"),
        (["--from", "{b}", "--to", "{b}", "--save", "{notes}"], "notes.txt exists"),
        (["--from", "ESP32_GENERIC@v9.9.9", "--to", "{b}"], "ESP32_GENERIC@v9.9.9 is not in "
                                                           "the firmware manifest"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_before_anything_boots(
    tmp_path: Path, firmware_dir: Path, given: list[str], said: str
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("release notes\n")
    b = next(firmware_dir.glob("ESP32_GENERIC-OTA-*-v1.25.0.bin"))
    args = [a.format(notes=notes, b=b) for a in given]
    run = upgrade_cli(*args, "--artifacts", str(tmp_path / "art"), "--qemu", "/nonexistent")
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.startswith("error: ") and said in run.stderr.splitlines()[0]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "art").exists() or not any((tmp_path / "art").rglob("serial.log"))


# -- harness upgrade on files it has never seen -------------------------------------------


@pytest.mark.emulation
def test_harness_upgrade_answers_every_question_on_files_it_has_never_seen(
    qemu: Path, firmware_dir: Path, tmp_path: Path
) -> None:
    """Two release files under names no manifest knows; the answers, their lines, the
    exit code of a --require'd yes, and the saved scenario (what ran, as assertions)."""
    board = tmp_path / "in-the-field.bin"
    update = tmp_path / "next-release.bin"
    board.write_bytes(next(firmware_dir.glob("ESP32_GENERIC-OTA-*-v1.22.0.bin")).read_bytes())
    update.write_bytes(next(firmware_dir.glob("ESP32_GENERIC-OTA-*-v1.25.0.bin")).read_bytes())
    save = tmp_path / "scenarios" / "fleet.yaml"
    run = upgrade_cli("--from", str(board), "--to", str(update), "--require", "rollback",
                      "--require", "downgrade", "--save", str(save), "--qemu", str(qemu),
                      "--artifacts", str(tmp_path / "art"), "--retries", "2")  # fmt: skip
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "in-the-field.bin (v1.22.0) -> next-release.bin (v1.25.0), 4MB" in out
    assert "boots B:            yes" in out
    assert "| MicroPython v1.25.0 on 2025-04-15" in out
    assert "from which slot:    ota_1" in out
    assert "files kept:         yes, all 3 read back under B" in out
    assert "confirms:           yes" in out and "after a power-on: ota_1" in out
    assert "rollback protected: yes" in out
    assert "| otadata while B ran unconfirmed: [VALID, PENDING_VERIFY]" in out
    assert "downgrade safe:     yes" in out and "| MicroPython v1.22.0 on 2023-12-27" in out
    assert "| /upgrade-check.txt, written by B (v1.25.0), under A: v1.25.0" in out
    saved = scenario.load(save)
    assert saved.matrix.update == ["${scenario_dir}/../next-release.bin"]
    booted = [getattr(a, "partition", None) for a in saved.step_args if a.KIND == "assert_booted"]
    assert booted == ["ota_0", "ota_1"]  # rolled back, then confirmed: what the run saw


def test_the_exit_code_is_the_required_answers() -> None:
    from harness.frontends import upgrade

    answers = [upgrade.Answer("rollback", "no", "an unconfirmed B boots again"),
               upgrade.Answer("slot", "ota_1"), upgrade.Answer("downgrade", "yes")]  # fmt: skip
    assert upgrade.exit_code(answers, (), "") == upgrade.ANSWERED == 0
    assert upgrade.exit_code(answers, ("slot", "downgrade"), "") == 0
    assert upgrade.exit_code(answers, ("rollback",), "") == upgrade.REQUIRED_NO == 1
    assert upgrade.exit_code(answers, ("rollback",), "the guest stalled") == 2
