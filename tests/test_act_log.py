"""act's JSON log read into jobs (tools/act_local.py), on lines in act 0.2.89's own format.

act reports `jobResult` for a whole matrix, so the last matrix job to finish says
"failure" when any did; a matrix job's colour must come from its own steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from act_local import parse_log


def _line(job: str, matrix: dict[str, str], time: str, **extra: object) -> dict[str, object]:
    return {"job": f"nightly/{job}", "jobID": job.split()[0] if matrix == {} else "scenarios",
            "matrix": matrix, "level": "info", "time": time, **extra}  # fmt: skip


def test_a_matrix_job_is_red_by_its_own_steps_not_by_acts_job_result() -> None:
    four, sixteen = {"flash_size": "4MB"}, {"flash_size": "16MB"}
    lines = [
        _line("image", {}, "2026-12-05T09:44:30Z", msg="⭐ Run Set up job"),
        _line("image", {}, "2026-12-05T09:46:34Z", stage="Main", step="Build",
              stepResult="success", executionTime=56_300_000_000),
        _line("4MB", four, "2026-12-05T09:47:00Z", msg="⭐ Run Set up job"),
        _line("4MB", four, "2026-12-05T09:51:00Z", stage="Main", step="Scenario library",
              stepResult="failure"),
        _line("4MB", four, "2026-12-05T09:51:32Z", command="summary",
              content="| fails-on-purpose | 4mb-v1.25.0 | **FAIL** |\n"),
        _line("16MB", sixteen, "2026-12-05T09:52:00Z", stage="Main", step="Scenario library",
              stepResult="success"),
        _line("16MB", sixteen, "2026-12-05T09:55:37Z", jobResult="failure", msg="🏁  Job failed"),
        _line("16MB", sixteen, "2026-12-05T09:55:37Z", raw_output=True, msg="21 passed\n"),
    ]  # fmt: skip
    image, four_mb, sixteen_mb = parse_log(lines)
    assert (image.job_id, image.red, image.seconds) == ("image", False, 124.0)
    assert image.step_seconds == {"Build": 56.3}
    assert four_mb.red and four_mb.matrix == four and four_mb.seconds == 272.0
    assert "| fails-on-purpose | 4mb-v1.25.0 | **FAIL** |" in four_mb.summary
    assert not sixteen_mb.red  # though act said "Job failed" for the matrix
    assert sixteen_mb.output == ["21 passed"]
