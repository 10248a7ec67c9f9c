"""The documentation that is made from the code stays made from the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.scenario import format as scenario
from harness.scenario.reference import BEGIN, END, steps_markdown, with_reference

ROOT = Path(__file__).parent.parent
SCENARIOS_DOC = ROOT / "docs" / "scenarios.md"


def test_the_step_reference_is_the_step_formats() -> None:
    """docs/scenarios.md's table is what `make docs` makes of the registry: run it."""
    text = SCENARIOS_DOC.read_text()
    assert BEGIN in text and END in text
    assert with_reference(text) == text, "docs/scenarios.md drifted: run `make docs`"
    for kind in scenario.STEP_FORMATS:
        assert f"| `{kind}` |" in text


def test_harness_schema_prints_the_same_reference() -> None:
    run = subprocess.run([sys.executable, "-m", "harness", "schema", "--steps"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == steps_markdown()


def test_the_readme_is_for_users() -> None:
    """At most 200 lines, the two commands on its first screen, and every doc it points
    to exists."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "make test-16mb" in first_screen and "make test " in first_screen
    for name in ("scenarios", "commands", "repro", "serial-port", "images-and-firmware",
                 "docker-and-ci", "known-behaviour", "architecture"):  # fmt: skip
        assert f"docs/{name}.md" in readme
        assert (ROOT / "docs" / f"{name}.md").is_file()
    assert (ROOT / "bench" / "README.md").is_file()


def test_known_behaviour_says_what_the_emulator_source_bears_out() -> None:
    """The two corrections read from the QEMU tree this project builds (d96ca95c64): the
    interrupt matrix does not re-assert on a mapping write there (that came with
    47ff9135c3), so how the deadlock starts is marked not known; and the APP CPU left in
    ROM after machine.reset() is the chip's behaviour, not an emulator quirk."""
    text = " ".join((ROOT / "docs" / "known-behaviour.md").read_text().split())
    assert "`esp32_intmatrix_write()` in `hw/xtensa/esp32_intc.c` only stores the map entry" in text
    assert "`47ff9135c3`" in text and "not in this build" in text
    assert "**not known**" in text
    assert "That is the chip's behaviour, not the emulator's" in text
    assert "re-asserts a high source whenever its mapping is written" not in text
