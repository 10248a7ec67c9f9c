"""The verdict that does not ask the firmware (what each slot holds by SHA-256, where the
cache MMU maps the code from), and a power cut's flash exported for a real board: judged
on made-up looks and flashes, then in QEMU against `assert_booted` on the power-loss
library's points, and the exported flash booted again."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from harness.emulator import device, mmu, policy
from harness.emulator.device import BootOptions
from harness.emulator.qemu import CpuState, running_qemus
from harness.errors import DeviceTimeout, GuestStalled, HarnessError, StepFailed
from harness.flash import formats
from harness.flash.ops import FlashOp, states
from harness.frontends import cli, report
from harness.scenario import cutfile, plan, runner
from harness.scenario import format as scenario_format
from harness.scenario.powercut import Recorded
from harness.scenario.results import CellId, CellResult, FaultOutcome, FaultPoint, Verdict
from harness.scenario.verdict import Known, KnownImage, decide, installed, judge, stalled
from tests import cells

LIBRARY = Path(__file__).parent.parent / "scenarios" / "power-loss"
OTA_0, OTA_1 = 0x10000, 0x190000


def _apps(same: bool = False) -> tuple[bytes, bytes]:
    rng = random.Random(7)
    old = rng.randbytes(0x20000)
    return old, old if same else rng.randbytes(0x18000)


def _known(old: bytes, new: bytes, flash: bytes) -> Known:
    table = formats.parse_table(flash)
    return Known(
        table, KnownImage.of("old app", "ota_0", old), KnownImage.of("new app", "ota_1", new)
    )


def _flash(ota_0: bytes, ota_1: bytes) -> bytes:
    data = bytearray(cells.flash(4, ota_1))
    data[OTA_0 : OTA_0 + len(ota_0)] = ota_0
    return bytes(data)


def _look(code: int | None, pc: int = 0x40090E6E) -> mmu.Look:
    """A look whose IROM pages (from 0x400D0000) map the flash from `code` on."""
    entries = [mmu.INVALID] * mmu.REGION_ENTRIES
    if code is not None:
        for i in range(mmu.IROM_FIRST, mmu.IROM_FIRST + 8):
            entries[i] = code // mmu.PAGE + i - mmu.IROM_FIRST
    return mmu.Look(mmu.CodeMap(tuple(entries)), (CpuState(0, pc, 0), CpuState(1, pc, 0)))


def _watch(*codes: int | None, resets: int = 0, pc: int = 0x40090E6E) -> mmu.Watch:
    return mmu.Watch(tuple(_look(c, pc) for c in codes), resets)


def test_the_mmu_map_gives_the_flash_an_address_runs_from() -> None:
    look = _look(0x1A0000, pc=0x400D1234)
    assert look.code is not None
    assert look.code.code == 0x1A0000
    assert look.code.flash_at(0x400D1234) == 0x1A1234
    assert look.code.flash_at(0x400E0010) == 0x1B0010  # the next 64 KB page
    assert look.code.flash_at(0x40090E6E) is None  # internal RAM: no flash behind it
    assert look.in_flash() == [0x1A1234, 0x1A1234]
    assert _look(None).code is not None and _look(None).code.code is None  # type: ignore[union-attr]


def test_each_slot_is_known_by_its_bytes() -> None:
    old, new = _apps()
    flash = _flash(old, new)
    known = _known(old, new, flash)
    assert installed(flash, known) == {"ota_0": ["old app"], "ota_1": ["new app"]}
    torn = bytearray(flash)
    torn[OTA_1 + 0x100] ^= 0x01  # one bit short of the new app
    assert installed(bytes(torn), known) == {"ota_0": ["old app"], "ota_1": []}


@pytest.mark.parametrize(
    ("watch", "kind", "runs"),
    [
        (_watch(OTA_1 + 0x40000, OTA_1 + 0x40000, OTA_1 + 0x40000), "new app", "ota_1"),
        (_watch(OTA_0 + 0x40000, OTA_0 + 0x40000, OTA_0 + 0x40000), "old app", "ota_0"),
        (_watch(None, None, None), "nothing", None),  # ROM, bootloader, download mode
        (_watch(OTA_1, OTA_1, OTA_1, resets=1), "nothing", None),  # a boot loop
        (_watch(OTA_1, None, OTA_1), "nothing", None),  # between resets
    ],
)  # fmt: skip
def test_the_verdict_is_what_runs_from_which_known_image(
    watch: mmu.Watch, kind: str, runs: str | None
) -> None:
    old, new = _apps()
    flash = _flash(old, new)
    got = decide(watch, flash, _known(old, new, flash))
    assert (got.kind, got.runs) == (kind, runs), got.why
    assert got.installed == {"ota_0": ["old app"], "ota_1": ["new app"]}


def test_an_update_of_the_same_bytes_is_told_apart_by_its_slot() -> None:
    """Old and new the same app (a scenario's payload `app`): the slot decides."""
    old, new = _apps(same=True)
    flash = _flash(old, new)
    known = _known(old, new, flash)
    assert decide(_watch(OTA_0, OTA_0), flash, known).kind == "old app"
    assert decide(_watch(OTA_1, OTA_1), flash, known).kind == "new app"
    damaged = bytearray(flash)
    damaged[OTA_1 + 5] ^= 0x80
    other = decide(_watch(OTA_1, OTA_1), bytes(damaged), known)
    assert other.kind == "other app" and other.line() == "other app running (ota_1)"


def test_a_pc_in_mapped_flash_is_said() -> None:
    old, new = _apps()
    flash = _flash(old, new)
    got = decide(_watch(OTA_1, OTA_1, pc=0x400D0040), flash, _known(old, new, flash))
    assert got.pc_in_flash and got.pcs == [0x400D0040, 0x400D0040]


def test_a_stalled_guest_among_the_causes_is_hung() -> None:
    stuck = GuestStalled("the emulated CPUs are stuck")
    failure = StepFailed("step 3 failed")
    failure.__cause__ = stuck
    assert stalled(failure) is stuck
    assert stalled(DeviceTimeout("no prompt")) is None
    assert stalled(None) is None


# -- a power cut kept, and exported ------------------------------------------------------


def _recorded(before: bytes) -> Recorded:
    ops = [FlashOp("erase", OTA_1, 0x1000), FlashOp("program", OTA_1, 4, b"\x12\x34\x56\x78"),
           FlashOp("erase", 0xE000, 0x1000)]  # fmt: skip
    return Recorded(of=len(ops), before=before, ops=ops)


def _cell_with_cut(artifacts: Path) -> tuple[CellResult, Recorded]:
    result = cells.ran(artifacts, CellId(scenario="cut", flash_size="4MB", firmware="v1.25.0"))
    recorded = _recorded(cells.flash(4))
    point = FaultPoint(2, "2/3", "after operation 2 of 3", "before erase")
    verdict = Verdict("old app", "the MMU maps code from ota_0", "ota_0", OTA_0)
    result.faults = [FaultOutcome("power_cut", 3, point, "passed", "ota_0", [], "ota_0", {}, [],
                                  verdict=verdict)]  # fmt: skip
    result.write(result.folder)
    assert cutfile.keep(result.folder, 3, recorded) is not None
    return result, recorded


def test_a_kept_cut_rebuilds_the_flash_of_any_point(tmp_path: Path) -> None:
    result, recorded = _cell_with_cut(tmp_path / "art")
    cut = cutfile.load(cutfile.path_of(result.folder, 3))
    assert cut.step == 3 and cut.ops == recorded.ops and cut.before == recorded.before
    for n in range(len(recorded.ops) + 1):
        assert cut.flash(n) == next(f for _, f in states(recorded.before, recorded.ops, [n]))
    with pytest.raises(HarnessError, match=r"--point 4 is out of range: .* recorded 3 flash"):
        cut.flash(4)


def test_a_torn_point_is_rebuilt_as_the_sweep_drew_it(tmp_path: Path) -> None:
    """-k: the state after k-1 operations with operation k torn by the kept seed; only
    operation k's bytes differ, some of the erase's old 0 bits still 0."""
    before = bytearray(cells.flash(4))
    before[OTA_1 : OTA_1 + 0x1000] = bytes(0x1000)  # all 0 bits: an erase cut keeps some
    recorded = _recorded(bytes(before))
    recorded.seed = 7
    path = cutfile.keep(tmp_path, 3, recorded)
    assert path is not None
    cut = cutfile.load(path)
    assert cut.seed == 7
    whole, torn_erase = cut.flash(1), cut.flash(-1)
    assert torn_erase == cutfile.load(path).flash(-1)  # the seed decides it
    region = torn_erase[OTA_1 : OTA_1 + 0x1000]
    end = OTA_1 + 0x1000
    assert torn_erase[:OTA_1] == whole[:OTA_1] and torn_erase[end:] == whole[end:]
    assert region not in (bytes(0x1000), whole[OTA_1 : OTA_1 + 0x1000])  # half-way
    with pytest.raises(HarnessError, match=r"--point -4 is out of range: torn states go"):
        cut.flash(-4)
    with pytest.raises(HarnessError, match=r"is a second cut"):
        cut.flash(10**9 + 1)
    (tmp_path / "plain").mkdir()
    kept = cutfile.keep(tmp_path / "plain", 3, _recorded(bytes(before)))
    assert kept is not None
    plain = cutfile.load(kept)
    with pytest.raises(HarnessError, match=r"drew none \(`torn: true`"):
        plain.flash(-1)


def test_harness_powercut_export_writes_the_point_and_the_esptool_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, recorded = _cell_with_cut(tmp_path / "art")
    out = tmp_path / "state.bin"
    assert cli.main(["powercut", "export", str(tmp_path / "art"), "--point", "2", "-o",
                     str(out)]) == 0  # fmt: skip
    assert out.read_bytes() == next(f for _, f in states(recorded.before, recorded.ops, [2]))
    said = capsys.readouterr().out
    assert "booted ota_0; verdict: old app running (ota_0)" in said
    assert f"esptool --chip esp32 --port PORT write-flash --flash-size 4MB 0 {out}" in said


@pytest.mark.parametrize(
    ("where", "point", "message"),
    [
        ("missing", 1, "missing: no such artifacts folder"),
        ("empty", 1, "no power cut in it"),
        ("art", 9, "--point 9 is out of range"),
        ("art", -1, "--point -1 is a torn state, and the cut at step 3 drew none"),
    ],
)
def test_bad_export_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, point: int, message: str
) -> None:
    _cell_with_cut(tmp_path / "art")
    cells.ran(tmp_path / "empty", CellId(scenario="nocut", flash_size="4MB", firmware="v1.25.0"))
    code = cli.main(["powercut", "export", str(tmp_path / where), "--point", str(point), "-o",
                     str(tmp_path / "state.bin")])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and message in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "state.bin").exists()


def test_the_markdown_summary_counts_the_points_by_verdict(tmp_path: Path) -> None:
    _cell_with_cut(tmp_path / "art")
    text = report.markdown(tmp_path / "art")
    assert "cut[4mb-v1.25.0] step 3 `power_cut`, 1 point: 1 old app running (ota_0)" in text


# -- in QEMU ---------------------------------------------------------------------------

SWEEP = """title: an update cut at spread points, from v1.27.0 to v1.25.0's app
source: tests/test_verdict.py
matrix: {{flash_size: [4MB], firmware: [ESP32_GENERIC@v1.27.0]}}
requires: [ota]
steps:
  - boot: prompt
  - power_cut:
      ota: {{payload: "app-of:{new}", method: harness}}
      sweep: 2
  - boot: prompt
  - assert_booted: [ota_0, ota_1]
  - assert_verdict: {{kind: [old app, new app], payload: "app-of:{new}"}}
"""


def _run(path: Path, selector, qemu, artifacts: Path, **only: str) -> list[CellResult]:
    found = plan.cells(scenario_format.load(path), selector, plan.RunOptions())
    chosen = [c for c in found if isinstance(c, plan.CellPlan)
              and all(str(getattr(c.cell_id, k)) == v for k, v in only.items())]  # fmt: skip
    return [runner.run_cell(c, runner.Setup(artifacts, qemu)) for c in chosen]


def _agrees(result: CellResult) -> None:
    """Every point MicroPython said it booted from: the verdict says the same slot runs."""
    assert result.faults, result.message
    for o in result.faults:
        assert o.verdict is not None, o.point.label
        if o.booted is not None:
            assert (o.verdict.runs, o.verdict.kind in ("old app", "new app")) == (o.booted, True), (
                o.point.label, o.verdict)  # fmt: skip


@pytest.mark.slow  # minutes of emulation: run by make test-powerloss
def test_the_verdict_agrees_with_assert_booted_and_an_export_boots_the_same(
    qemu, fw, firmware_selector, tmp_path
) -> None:
    """The power-loss library's cheapest cells, and an update from one release to another
    cut at spread points (the old app before otadata switches, the new after): per point,
    the slot the MMU runs from is the one `assert_booted` read from MicroPython. Then two
    points' flash, exported, boot the same in a board of their own."""
    art = tmp_path / "art"
    library = []
    for name in ("power-loss-during-otadata-write", "power-loss-before-confirm"):
        library += _run(LIBRARY / f"{name}.yaml", firmware_selector, qemu, art,
                        flash_size="4MB", firmware="v1.25.0")  # fmt: skip
    for result in library:
        assert result.status == "passed", result.message
        _agrees(result)
        assert {o.verdict.kind for o in result.faults if o.verdict} == {"old app"}
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(new=fw("OTA-20250415-v1.25.0")))
    (result,) = _run(path, firmware_selector, qemu, art)
    assert result.status == "passed", result.message
    _agrees(result)
    kinds = [o.verdict.kind for o in result.faults if o.verdict]
    assert kinds[0] == "old app" and kinds[-1] == "new app", kinds  # before, after the switch
    steps = [r.detail for r in result.timeline if r.step == "assert_verdict"]  # the step's own
    assert [v.kind for v in steps] == kinds and all(isinstance(v, Verdict) for v in steps)
    assert not running_qemus(str(tmp_path))
    for outcome in (result.faults[0], result.faults[-1]):
        out = tmp_path / f"state-{outcome.point.key}.bin"
        assert cli.main(["powercut", "export", result.artifacts, "--point",
                         str(outcome.point.key), "-o", str(out)]) == 0  # fmt: skip
        options = BootOptions(policy.for_image(out), qemu=qemu, run_dir=tmp_path / out.stem)
        with device.boot(out, options) as dev:
            dev.wait_prompt(60)
            assert dev.running_partition() == outcome.booted
            known = Known(formats.parse_table(out.read_bytes()))
            judged = judge(dev, known)
            assert judged is not None and judged.runs == outcome.booted
    assert not running_qemus(str(tmp_path))
