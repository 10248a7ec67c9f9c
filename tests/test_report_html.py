"""The HTML report, rendered from real runs and read back in a real browser.

Three real cells: the starting report at 16MB (a full image staged into ota_1, the
bootloader refuses it, the board runs ota_0), the same run guarded by a `not_expect`
on the bootloader's line (so it fails, on that line), and a cell the plan skips. The
page is opened from file:// in Debian's headless Chromium (driven by Playwright); the
screenshots go to the run's artifacts folder (`report-screenshots/`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.emulator import hostlock
from harness.flash import formats
from harness.frontends.html import write_inspect, write_report
from harness.scenario import format as scenario_format
from harness.scenario import plan, runner
from harness.scenario.results import load_cell

ROOT = Path(__file__).resolve().parent.parent
GUARDED = """title: the starting report, guarded against
source: tests/test_report_html.py
matrix: {flash_size: [16MB], firmware: [ESP32_GENERIC-OTA@v1.25.0]}
steps:
  - boot: prompt
  - not_expect: "overlaps bootloader data"
  - ota: {payload: full-image, method: staged}
"""
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def _chromium() -> str | None:
    found = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        # the test setup installs Debian's chromium where it is missing (once per machine)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True,
                       timeout=900, env=env)  # fmt: skip
        found = shutil.which("chromium")
    return found


@pytest.fixture(scope="module")
def browser(run: dict[str, Any]) -> Iterator[Any]:
    """Started after the cells ran: Playwright's sync API holds an event loop in this
    thread, which QEMU's QMP client (qemu.qmp's legacy sync wrapper) cannot share."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("needs Debian's chromium: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    # Chromium loads the host like an emulation: a build that must run alone waits for it
    with hostlock.emulation_slot(alone=False), sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def run(qemu: Path, firmware_selector: Any, tmp_path_factory: pytest.TempPathFactory,
        pytestconfig: pytest.Config) -> dict[str, Any]:  # fmt: skip
    """The three real cells and their report."""
    work = tmp_path_factory.mktemp("report")
    guarded = work / "guarded.yaml"
    guarded.write_text(GUARDED)
    options = plan.RunOptions(flash_sizes=(), firmware=())
    starting = scenario_format.load(ROOT / "scenarios" / "ota-full-image-into-slot.yaml")
    cells = [c for c in plan.cells(starting, firmware_selector, options) if c.id == "16mb-v1.25.0"]
    cells += plan.cells(scenario_format.load(guarded), firmware_selector, options)
    psram = scenario_format.load(ROOT / "scenarios" / "psram-build-with-psram.yaml")
    cells += plan.cells(psram, firmware_selector, plan.RunOptions(
        firmware=("ESP32_GENERIC@v1.27.0",)))[:1]  # fmt: skip
    artifacts = work / "artifacts"
    results = [runner.run_cell(c, runner.Setup(artifacts, qemu)) for c in cells]
    if any(r.status == "skipped" and "not in" in r.message for r in results[:2]):
        pytest.skip(results[0].message)
    page = write_report(artifacts, cells=[Path(r.artifacts) for r in results])
    shots = Path(pytestconfig.getoption("artifacts")).resolve() / "report-screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    return {"results": results, "page": page, "shots": shots, "cells": cells}


def _open(browser: Any, page_path: Path, width: int = 1280) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_path.as_uri())
    return page, errors


def test_the_report_loads_offline_with_one_grid_cell_per_result(browser: Any, run: Any) -> None:
    page, errors = _open(browser, run["page"])
    assert errors == []
    assert page.locator("td.cell").count() == len(run["results"]) == 3
    statuses = sorted(page.locator("td.cell").evaluate_all("els => els.map(e => e.dataset.status)"))
    assert statuses == sorted(r.status for r in run["results"])
    html = run["page"].read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    skipped = next(r for r in run["results"] if r.status == "skipped")
    assert page.locator("td.cell.skipped").get_attribute("title") == skipped.message  # on hover
    page.screenshot(path=str(run["shots"] / "overview.png"))
    page.locator("#failed-only").check()
    assert page.locator("td.cell:not(.hidden)").count() == 1
    assert page.locator("section.cellpage:not(.hidden)").count() == 1
    page.close()


def test_a_failing_cell_shows_its_failure_line_and_the_serial_line_that_failed(
    browser: Any, run: Any
) -> None:
    failed = next(r for r in run["results"] if r.status == "failed")
    page, errors = _open(browser, run["page"])
    section = page.locator("section.cellpage.failed")
    assert section.locator("p.failure").inner_text() == failed.message.splitlines()[0]
    bad = section.locator("pre.serial .l.fail")
    assert bad.count() == 1
    assert "overlaps bootloader data" in bad.inner_text()
    assert bad.inner_text() in failed.message  # the very line the harness named
    section.screenshot(path=str(run["shots"] / "failed-cell.png"))
    assert errors == []
    page.close()


def test_the_partition_map_draws_the_slots_at_the_offsets_of_the_image_table(
    browser: Any, run: Any
) -> None:
    """The boxes read back from the SVG sit where the built image's own table says, the
    board is drawn back on ota_0, and the full image is drawn written into ota_1."""
    result = run["results"][0]
    cell = run["cells"][0]
    built = runner.build(cell)
    data = built.image.path.read_bytes()
    table = formats.parse_table(data)
    page, _ = _open(browser, run["page"])
    anchor = page.locator(f'section.cellpage[data-name="{result.name}"]').get_attribute("id")
    whole = page.locator(f'figure[data-map="{anchor}-after"] svg')
    size = int(page.locator(f'figure[data-map="{anchor}-after"]').get_attribute("data-flash-size"))
    assert size == len(data)
    for slot in table.ota_slots:
        box = whole.locator(f'rect.part[data-name="{slot.name}"]')
        x, width = float(box.get_attribute("x")), float(box.get_attribute("width"))
        assert abs(x - slot.offset / size * 1000) < 0.01, slot.name
        assert abs(width - slot.size / size * 1000) < 0.01, slot.name
        assert int(box.get_attribute("data-offset")) == slot.offset
    assert whole.locator("rect.booted").get_attribute("data-name") == result.booted == "ota_0"
    ota_1 = table.get("ota_1")
    assert ota_1 is not None
    written = whole.locator("rect.written").evaluate_all(
        "els => els.map(e => [Number(e.dataset.offset), Number(e.dataset.size)])")  # fmt: skip
    assert any(o == ota_1.offset and s >= 0x100000 for o, s in written), written
    page.locator(f"#{anchor}").screenshot(path=str(run["shots"] / "starting-report-cell.png"))
    page.close()


def test_the_page_fits_a_phone(browser: Any, run: Any) -> None:
    page, errors = _open(browser, run["page"], width=390)
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 392, overflow
    page.screenshot(path=str(run["shots"] / "phone.png"))
    assert errors == []
    page.close()


def test_inspect_html_draws_the_full_image_in_the_bootloaders_memory(
    browser: Any, run: Any, tmp_path: Path
) -> None:
    """`harness inspect FILE --html` on the starting report's full image: its first
    segment drawn inside the bootloader's DRAM, flagged."""
    full = runner.payload_path(run["cells"][0], "full-image", None)
    out = write_inspect(full, tmp_path / "inspect.html")
    page, errors = _open(browser, out)
    overlapping = page.locator("rect.segment.overlaps")
    assert overlapping.count() >= 1
    assert int(overlapping.first.get_attribute("data-addr")) == 0x3FFF0030
    assert "overlaps bootloader data" in page.locator("p.failure").inner_text()
    page.screenshot(path=str(run["shots"] / "inspect.png"), full_page=True)
    assert errors == []
    page.close()


def test_harness_report_html_merges_the_artifacts_of_several_jobs(run: Any, tmp_path: Path) -> None:
    """The nightly downloads each matrix job's artifacts into a folder of its own; one page
    covers them all, and the CLI says where it is."""
    merged = tmp_path / "merged"
    for i, result in enumerate(run["results"]):
        shutil.copytree(
            result.artifacts, merged / f"scenarios-job-{i}" / Path(result.artifacts).name
        )
    out = tmp_path / "report.html"
    cmd = [sys.executable, "-m", "harness", "report", str(merged), "--html", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"report: {out}"
    html = out.read_text()
    assert html.count('<td class="cell ') == 3
    assert all(f'data-name="{r.name}"' in html for r in run["results"])


def test_the_cells_record_the_lines_expect_matched_and_the_one_not_expect_failed_on(
    run: Any,
) -> None:
    """Recorded by the console and the runner as they happen, read back from the files."""
    starting, failed = run["results"][0], next(r for r in run["results"] if r.status == "failed")
    first, second = starting.matched  # one line per pattern of its `expect`
    assert first.startswith("E (") and first.endswith("invalid: overlaps bootloader data")
    assert second.startswith("E (") and second.endswith("OTA app partition slot 1 is not bootable")
    violation = failed.violation
    assert violation is not None and violation.rule == "overlaps bootloader data"
    assert violation.rule in violation.line and violation.line in failed.message
    assert [r.step for r in failed.timeline if r.status == "failed"] == ["ota"]
    for result in (starting, failed):
        loaded = load_cell(Path(result.artifacts))
        assert (loaded.matched, loaded.violation) == (result.matched, result.violation)


def test_the_upgrade_view_squares_open_their_cells(browser: Any, run: Any, tmp_path: Path) -> None:
    """Upgrade cells (written as the runner writes them, tests/cells.py) are drawn from x
    to; a click on a square opens its cell; `failed only` leaves the no squares."""
    from cells import ran

    from harness.scenario.results import CellId

    for a, b, failed in (("v1.22.0", "v1.25.0", False), ("v1.22.0", "v1.28.0", True),
                         ("v1.27.0", "v1.28.0", False)):  # fmt: skip
        ran(tmp_path, CellId(scenario="upgrade", flash_size="16MB", firmware=a, update=b), failed)
    page, errors = _open(browser, write_report(tmp_path))
    squares = page.locator("table.upgrades td.cell")
    assert [s.inner_text().split("\n")[0] for s in squares.all()] == ["yes", "no", "yes"]
    assert page.locator("table.upgrades thead th").all_inner_texts() == [
        "from \\ to", "v1.25.0", "v1.28.0"]  # fmt: skip
    page.locator("table.upgrades td.cell.failed a").click()
    assert page.evaluate("location.hash") == "#upgrade-16mb-v1-22-0--v1-28-0"
    assert page.locator("section.cellpage:target h2").inner_text().endswith(
        "upgrade[16mb-v1.22.0->v1.28.0]")  # fmt: skip
    page.locator("#failed-only").check()
    assert page.locator("table.upgrades td.cell:not(.hidden)").count() == 1
    page.screenshot(path=str(run["shots"] / "upgrade-paths.png"))
    assert errors == []
    page.close()


def test_a_networked_cell_shows_the_servers_requests_beside_its_serial_log(tmp_path: Path) -> None:
    """http.json, written through harness.scenario.results, is drawn as a table of the
    requests (a cut one marked) just before the serial log."""
    from cells import ran

    from harness.scenario.results import CellId, HttpLog
    from harness.served import Served

    cell = CellId(scenario="download-dies", flash_size="4MB", firmware="v1.22.0")
    result = ran(tmp_path / "artifacts", cell)
    cut = Served("GET", "/update.bin", 200, 1483648, 1483648, 494549,
                 "closed after 494549 of 1483648 bytes (asked)", 7.5, 0.2, "127.0.0.1",
                 "closed after 494549 bytes")  # fmt: skip
    HttpLog(url="http://10.0.2.2:40123", requests=[cut]).write(result.folder)
    assert load_cell(result.folder).http_log() == HttpLog(url="http://10.0.2.2:40123",
                                                          requests=[cut])  # fmt: skip
    html = write_report(tmp_path / "artifacts").read_text()
    section = html[html.index("HTTP requests") : html.index("Serial log")]
    assert "http://10.0.2.2:40123" in section
    assert '<tr class="fail"><td>7.50</td><td>GET /update.bin</td><td>200</td>' in section
    assert "closed after 494549 of 1483648 bytes (asked)" in section
