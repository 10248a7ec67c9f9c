"""Faults as one kind, without QEMU: `bit_flip`'s draws (retention loss: only 0 bits turn
1, the same bits for the same seed), its format, and the reports, which show a fault's
points the same way whatever the fault is called (the runs in QEMU: the library's
bit-flip scenario, tests/test_powercut.py, tests/test_plugins.py)."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cells import flash, ran

from harness.errors import StepFailed
from harness.frontends import report
from harness.frontends.html import write_report
from harness.scenario import format as scenario_format
from harness.scenario.bitflip import BitFlip, Flipped, draw
from harness.scenario.results import CellId, FaultOutcome, FaultPoint, load_cell
from harness.scenario.stepformats import BitFlipArgs

OTA_1 = (0x190000, 0x180000)  # tests/cells.py's table
CELL = CellId(scenario="faulty", flash_size="16MB", firmware="v1.25.0")


def _bits(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _args(**kwargs: object) -> BitFlipArgs:
    return BitFlipArgs.model_validate({"partition": "ota_1", **kwargs})


def test_a_flip_turns_a_0_bit_into_1_and_the_seed_decides_which() -> None:
    rng = random.Random(9)
    region = bytes(rng.getrandbits(8) for _ in range(0x10000))
    flips = draw(region, 0x190000, _args(bits=5), "ota_1", seed=7)
    assert len({(f.offset, f.bit) for f in flips}) == 5
    for f in flips:
        assert 0x190000 <= f.offset < 0x1A0000
        assert not region[f.offset - 0x190000] >> f.bit & 1  # a programmed 0, lost
    assert draw(region, 0x190000, _args(bits=5), "ota_1", seed=7) == flips  # reproducible
    assert draw(region, 0x190000, _args(bits=5), "ota_1", seed=8) != flips


def test_a_sparse_partition_gives_up_exactly_its_0_bits() -> None:
    """Four 0 bits in 64 KB of 0xff: drawn from the list of them, not by chance."""
    region = bytearray(b"\xff" * 0x10000)
    region[0x1234] = 0b1110_0001  # bits 1 to 4 are 0
    flips = draw(bytes(region), 0, _args(bits=4), "nvs", seed=1)
    assert [(f.offset, f.bit) for f in flips] == [(0x1234, b) for b in (1, 2, 3, 4)]
    with pytest.raises(StepFailed, match="nvs has 4 bits at 0, fewer than the 5 to flip"):
        draw(bytes(region), 0, _args(bits=5), "nvs", seed=1)


def test_offsets_flip_one_0_bit_in_each_named_byte() -> None:
    region = bytes([0xFF, 0b0111_1111, 0xFF, 0x00])
    flips = draw(region, 0x1000, _args(offsets=[3, 1]), "p", seed=3)
    assert [f.offset for f in flips] == [0x1001, 0x1003]
    assert flips[0].bit == 7  # the only 0 bit of byte 1
    with pytest.raises(StepFailed, match=r"byte 0x2 of p is erased \(0xff\): it has no 0 bit"):
        draw(region, 0x1000, _args(offsets=[2]), "p", seed=3)
    with pytest.raises(StepFailed, match=r"offset 0x4 is past the end of p \(0x4 bytes\)"):
        draw(region, 0x1000, _args(offsets=[4]), "p", seed=3)


def test_each_trial_is_its_seed_and_leaves_the_flash_with_only_its_bits_flipped() -> None:
    app = bytes(random.Random(1).getrandbits(8) for _ in range(0x8000))
    before = flash(4, app)
    fault = BitFlip()
    recorded = Flipped(partition="ota_1", offset=OTA_1[0], size=OTA_1[1], before=before)
    recorded.points = fault.choose(_args(bits=3, seed=10, trials=2), recorded)
    assert [(p.key, p.short) for p in recorded.points] == [(10, "seed 10"), (11, "seed 11")]
    assert recorded.points[1].rerun == "rerun just that trial with `seed: 11` and `trials: 1`"
    assert recorded.points[0].label.startswith("3 bits of ota_1 lost (0 reads 1), seed 10: bit ")
    made = list(fault.flashes(recorded))
    assert [p for p, _ in made] == recorded.points
    for (point, after), flips in zip(made, recorded.trials, strict=True):
        assert len(after) == len(before) and after != before
        gained = _bits(after) & ~_bits(before)
        assert _bits(before) & ~_bits(after) == 0  # no bit went from 1 to 0
        assert bin(gained).count("1") == 3
        assert point.offset == flips[0].offset
        assert OTA_1[0] <= min(f.offset for f in flips) and max(f.offset for f in flips) < OTA_1[
            0
        ] + len(app)


def _scenario(tmp_path: Path, steps: str) -> Path:
    path = tmp_path / "flip.yaml"
    path.write_text("title: t\nmatrix: {flash_size: [4MB], firmware: [ESP32_GENERIC@v1.27.0]}\n"
                    f"steps:\n  - boot: prompt\n{steps}")  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("  - bit_flip: ota_1\n  - assert_booted: ota_0\n",
         ":5: steps.1: `bit_flip` leaves the board off: make the next step `boot`"),
        ("  - bit_flip: {partition: ota_1, bits: 2, offsets: [4]}\n  - boot: prompt\n",
         "bit_flip takes `bits: N` (drawn by the seed) or `offsets:` (one bit in each), not both"),
        ("  - bit_flip: {partition: ota_1, offsets: []}\n  - boot: prompt\n",
         "steps.1.bit_flip.offsets"),
        ("  - bit_flip: {partition: ota_1, bits: 0}\n  - boot: prompt\n",
         "steps.1.bit_flip.bits"),
    ],
)  # fmt: skip
def test_a_malformed_bit_flip_is_one_line(tmp_path: Path, steps: str, message: str) -> None:
    with pytest.raises(scenario_format.ScenarioError) as error:
        scenario_format.load(_scenario(tmp_path, steps))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bit_flip_with_its_power_on_loads(tmp_path: Path) -> None:
    loaded = scenario_format.load(_scenario(tmp_path, "  - bit_flip: ota_1\n  - boot: prompt\n"))
    flip = loaded.step_args[1]
    assert isinstance(flip, BitFlipArgs) and flip.count == 1 and flip.trials == 1


def _outcome(step: int, key: int, status: str, message: str = "") -> FaultOutcome:
    point = FaultPoint(key, f"#{key}", f"the brownout of {key} ms", f"{key} ms low",
                       0x190000 + key * 0x1000, f"rerun with `ms: {key}`")  # fmt: skip
    return FaultOutcome("brownout", step, point, status, "ota_0", ["VALID", "UNDEFINED"],  # type: ignore[arg-type]
                        "ota_0", {"ota_1": 1}, ["E (1) boot: x"], message,
                        [(0x190000 + key * 0x1000, 0x1000)])  # fmt: skip


def test_the_reports_show_any_faults_points_the_same_way(tmp_path: Path) -> None:
    """A fault the reports have never heard of: its points reach the text report, JUnit
    and the HTML page by what every fault has (a point, the flash it left, the outcome)."""
    result = ran(tmp_path, CELL)
    result.faults = [_outcome(3, 5, "passed"), _outcome(3, 9, "failed", "running from ota_0")]
    result.write(Path(result.artifacts))
    loaded = load_cell(Path(result.artifacts))
    assert loaded.faults == result.faults
    text = report.line(loaded)
    assert "step 3 `brownout`: 1 of 2 points passed:" in text
    row = text.splitlines()[-1].split()
    assert row[:3] == ["#9", "9", "ms"] and text.rstrip().endswith("failed: running from ota_0")
    report.junit([loaded], tmp_path / "junit.xml")
    props = [
        (p.get("name"), p.get("value")) for p in ET.parse(tmp_path / "junit.xml").iter("property")
    ]
    assert (
        "brownout",
        "the brownout of 9 ms: failed, booted ota_0, otadata VALID UNDEFINED",
    ) in props
    page = write_report(tmp_path).read_text()
    assert "<h3>Step 3 <code>brownout</code>: 1 of 2 points passed</h3>" in page
    assert page.count('<td class="pointmap"><svg') == 2 and page.count('class="pointat"') == 2
    assert '<td title="the brownout of 9 ms">#9</td>' in page


def test_repro_judges_a_sweep_by_its_points_alone(tmp_path: Path) -> None:
    """`harness repro --power-cut`'s verdict reads the points as any fault's."""
    from harness.frontends import repro

    result = ran(tmp_path, CELL)
    result.faults = [_outcome(2, 5, "passed"), _outcome(2, 9, "failed", "running from ota_0")]
    req = repro.Request(Path("fw.bin"), Path("update.bin"), power_cut=2)
    verdict = repro._cut_verdict(req, result, {"steps": []}, None)
    assert verdict.exit_code == repro.NOT_REPRODUCED
    assert ("survives every cut: no; 1 of 2 cut points failed, the first the brownout of 9 ms: "
            "running from ota_0") in verdict.text  # fmt: skip
    result.faults = result.faults[:1]
    verdict = repro._cut_verdict(req, result, {"steps": []}, None)
    assert verdict.exit_code == repro.REPRODUCED
    assert "survives every cut: yes, 1 cut points, each powered on to ota_0" in verdict.text


def test_repro_power_cut_all_prints_the_coverage_line_and_a_verdict_per_class(
    tmp_path: Path,
) -> None:
    """`--power-cut all`: every distinct state, one line per class of states the power-on
    cannot tell apart; the coverage line reaches the text and HTML reports too."""
    from dataclasses import replace

    from harness.frontends import repro
    from harness.frontends.commands.repro import _sweep_points

    assert _sweep_points("all") == "all" and _sweep_points("sweep:all") == "all"
    result = ran(tmp_path, CELL)
    line = "23,727 operations, 22,710 distinct states, 2 power-ons, every state covered"
    result.faults = [_outcome(2, 0, "passed"), _outcome(2, 23727, "passed")]
    for o, covers in zip(result.faults, ["22,709 states, operations 0-23,726", "1 state, "
                                         "operations 23,727"], strict=True):  # fmt: skip
        o.point, o.coverage = replace(o.point, covers=covers), line
    req = repro.Request(Path("fw.bin"), Path("update.bin"), power_cut="all")
    verdict = repro._cut_verdict(req, result, {"steps": []}, None)
    assert verdict.exit_code == repro.REPRODUCED
    lines = verdict.text.splitlines()
    assert lines[1] == "survives every cut: yes, 2 classes, each powered on to ota_0"
    assert lines[2] == f"coverage:  {line}"
    assert lines[3] == "  class at #0 (22,709 states, operations 0-23,726): passed, booted ota_0"
    result.write(Path(result.artifacts))
    assert line in report.line(load_cell(Path(result.artifacts)))
    assert f"step 2 `brownout`: {line}" in report.markdown(tmp_path)
    assert f'<p class="coverage">{line}</p>' in write_report(tmp_path).read_text()
