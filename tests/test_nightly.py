""".github/workflows/nightly.yml run for real with act, with a cell that fails on purpose.

`tools/run_workflow.py nightly` (what `make test-nightly` runs) on one release at both
sizes: the image job builds docker/Dockerfile, each matrix job runs the scenario library
and the power-loss folder in the image through `docker run`, plus
tests/nightly/fails-on-purpose.yaml through the `extra_scenarios` input; the report job
merges the jobs' artifacts. The run checks itself (run.json); this test reads what it
wrote. About 25 minutes on 2 cores: `pytest -m slow tests/test_nightly.py` (slow, and
marked docker so that `make test-reliability` leaves it out).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.docker]
ROOT = Path(__file__).resolve().parent.parent
FAILING = "tests/nightly/fails-on-purpose.yaml"
RELEASE = "ESP32_GENERIC-OTA@v1.25.0"


@pytest.fixture(scope="module")
def nightly() -> dict[str, object]:
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "run_workflow.py"), "nightly", "--releases",
         "v1.25.0", "--sizes", "4MB 16MB", "--extra", FAILING],
        cwd=ROOT, capture_output=True, text=True, timeout=5400,
    )  # fmt: skip
    if run.returncode == 2 and run.stderr.startswith("error: "):
        pytest.skip(run.stderr.strip())  # this machine lacks act, podman, ../shared, ...
    out = ROOT / "artifacts" / "act" / "nightly"
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]  # red, as it must be
    return {"run": json.loads((out / "run.json").read_text()), "out": out, "log": run.stdout}


def test_every_check_of_the_run_held(nightly: dict[str, object]) -> None:
    run = nightly["run"]
    assert isinstance(run, dict)
    failed = [c for c in run["checks"] if not c["ok"]]
    assert failed == [], failed
    assert len(run["checks"]) >= 16


def test_each_matrix_job_is_red_for_the_failing_cell_and_uploaded_under_its_own_name(
    nightly: dict[str, object],
) -> None:
    run = nightly["run"]
    assert isinstance(run, dict)
    jobs = {j["job"]: j for j in run["jobs"] if j["job"] != "scenarios"}
    assert jobs["image"]["result"] == jobs["report"]["result"] == "success"
    cells = [j for j in run["jobs"] if j["job"] == "scenarios"]
    assert sorted(j["matrix"]["flash_size"] for j in cells) == ["16MB", "4MB"]
    assert all(j["result"] == "failure" for j in cells)
    assert all(j["steps"]["Scenario library"] == "failure" for j in cells)
    for job in cells:
        assert f"| fails-on-purpose | {job['matrix']['flash_size'].lower()}-v1.25.0 | **FAIL**" \
            in job["summary"]  # fmt: skip
    names = [n for n in run["artifacts"] if n.startswith("scenarios-")]
    assert sorted(names) == [f"scenarios-16MB-{RELEASE}", f"scenarios-4MB-{RELEASE}"]


def test_the_merged_report_shows_the_failing_cells_beside_the_library(
    nightly: dict[str, object],
) -> None:
    out = nightly["out"]
    assert isinstance(out, Path)
    html = (out / "artifacts" / "report" / "report.html").read_text()
    results = sorted(out.glob("artifacts/scenarios-*/*/result.json"))
    statuses = [json.loads(p.read_text())["status"] for p in results]
    assert html.count('<td class="cell ') == len(results) > 40
    assert statuses.count("failed") >= 2
    for size in ("4mb", "16mb"):
        assert f'data-name="fails-on-purpose[{size}-v1.25.0]"' in html
    scenarios = {json.loads(p.read_text())["scenario"] for p in results}
    assert any(s.startswith("/scenarios/power-loss/") for s in scenarios)
    assert FAILING in scenarios
