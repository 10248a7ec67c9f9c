"""Power cuts: flash operations as QEMU's flash model reports them, the flash rebuilt after
any of them, the cut points chosen, the format's checks, and the real thing in QEMU: a
rebuilt flash equals what a live cut at the same operation leaves."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import pytest

from harness.emulator import device, policy
from harness.emulator.device import BootOptions
from harness.emulator.flashtrace import TraceFile, parse, parse_reads
from harness.emulator.qemu import running_qemus
from harness.errors import StepFailed
from harness.flash import formats, torn
from harness.flash.distinct import ReadSet, Reduction, Seen, distinct_points, reduce
from harness.flash.ops import FlashOp, apply, states
from harness.scenario import format as scenario_format
from harness.scenario.everystate import coverage_line
from harness.scenario.powercut import Cut, PowerCut, Recorded, cut_points
from harness.scenario.results import load_cell
from harness.scenario.stepformats import PowerCutArgs

# QEMU's log backend, as `-D FILE` writes it (with `-msg timestamp=on`, a pid@time: prefix)
TRACE = """\
m25p80_command_decoded [0x55d0] new command:0x6
m25p80_flash_erase [0x55d0] offset = 0x1000, len = 4096
m25p80_complete_collecting [0x55d0] decode cmd: 0x3 len 3 ear 0x0 addr 0x1000
m25p80_complete_collecting [0x55d0] decode cmd: 0x2 len 3 ear 0x0 addr 0x1000
m25p80_page_program [0x55d0] page program cur_addr=0x1000 data=0x12
m25p80_page_program [0x55d0] page program cur_addr=0x1001 data=0x34
1234@1700000000.000001:m25p80_complete_collecting [0x55d0] decode cmd: 0x2 len 3 ear 0x0 addr 0x1002
1234@1700000000.000002:m25p80_page_program [0x55d0] page program cur_addr=0x1002 data=0x0f
m25p80_page_program [0x55d0] page program cur_addr=0x2000 data=0xaa
m25p80_chip_erase [0x55d0] chip erase
"""


def test_trace_lines_become_operations_one_per_command() -> None:
    ops = parse(TRACE.splitlines(), 0x4000)
    assert ops == [
        FlashOp("erase", 0x1000, 4096),
        FlashOp("program", 0x1000, 2, b"\x12\x34"),  # a read command starts nothing
        FlashOp("program", 0x1002, 1, b"\x0f"),  # the next command, though contiguous
        FlashOp("program", 0x2000, 1, b"\xaa"),  # bytes that jump: where they go
        FlashOp("erase", 0, 0x4000),
    ]


def test_an_erase_sets_ones_and_a_program_only_clears_bits() -> None:
    flash = bytearray(b"\x00" * 8)
    apply(flash, FlashOp("erase", 0, 4))
    assert flash == b"\xff\xff\xff\xff\x00\x00\x00\x00"
    apply(flash, FlashOp("program", 0, 2, b"\xf0\x0f"))
    apply(flash, FlashOp("program", 0, 2, b"\x3c\xff"))  # NOR: bits only go from 1 to 0
    assert flash[:2] == b"\x30\x0f"
    with pytest.raises(ValueError, match="past the end"):
        apply(flash, FlashOp("erase", 4, 8))


def test_the_flash_after_each_point_is_built_in_one_pass() -> None:
    ops = [
        FlashOp("erase", 0, 2),
        FlashOp("program", 0, 1, b"\x01"),
        FlashOp("program", 1, 1, b"\x02"),
    ]
    got = dict(states(b"\x00\x00", ops, [3, 0, 1]))
    assert got == {0: b"\x00\x00", 1: b"\xff\xff", 3: b"\x01\x02"}


def _table() -> formats.PartitionTable:
    return formats.PartitionTable((
        formats.Partition("otadata", formats.DATA_TYPE, formats.SUBTYPE_OTA_DATA, 0xD000, 0x2000),
        formats.Partition("ota_1", formats.APP_TYPE, 0x11, 0x100000, 0x100000),
    ))  # fmt: skip


def _ops() -> list[FlashOp]:
    app = [FlashOp("program", 0x100000 + 64 * i, 64, b"\0" * 64) for i in range(20)]
    return [*app, FlashOp("erase", 0xE000, 0x1000), FlashOp("program", 0xE000, 32, b"\0" * 32)]


def _cut(**kwargs: object) -> PowerCutArgs:
    return PowerCutArgs.model_validate({"ota": {"payload": "app"}, **kwargs})


def test_a_sweep_spreads_its_points_and_keeps_the_boundaries() -> None:
    points = cut_points(_cut(sweep=3), _ops(), _table())
    assert {0, 20, 22} <= set(points)  # before the first, before otadata, after the last
    assert {6, 11, 16} <= set(points)  # 3 spread over 22 operations
    assert points == sorted(points)


def test_within_a_partition_cuts_where_it_is_half_written() -> None:
    assert cut_points(_cut(within="otadata"), _ops(), _table()) == [21]  # erased, not written
    with pytest.raises(StepFailed, match=r"made 0 flash operation.s. on ota_1 .2 in all."):
        cut_points(_cut(within="ota_1"), _ops()[20:], _table())


def test_within_leaves_out_programs_that_change_nothing() -> None:
    """esptool pads a 4 KB table with 0xff: programming those clears no bit, so a cut
    after them is the same flash as one after the last real entry."""
    entries = [FlashOp("program", 0x8000 + 32 * i, 32, b"\xaa" * 32) for i in range(3)]
    padding = [FlashOp("program", 0x8060 + 32 * i, 32, b"\xff" * 32) for i in range(5)]
    table_ops = [FlashOp("erase", 0x8000, 0x1000), *entries, *padding]
    assert cut_points(_cut(within="partition table"), table_ops, _table()) == [1, 2, 3]


def test_a_trace_goes_on_across_the_qemus_of_a_served_board(tmp_path: Path) -> None:
    """esptool's resets restart QEMU; each writes its own trace from the start of its file."""
    path = tmp_path / "flash-ops.trace"
    path.write_text("m25p80_flash_erase [0x1] offset = 0x0, len = 4096\n")
    trace = TraceFile(path)
    trace.mark()  # the recording starts here: the erase above is before it
    with path.open("a") as f:
        f.write("m25p80_flash_erase [0x1] offset = 0x1000, len = 4096\n")
    trace.handover(tmp_path / "flash-ops.1.trace")
    path.write_text("m25p80_flash_erase [0x2] offset = 0x2000, len = 4096\n")  # the next QEMU
    assert trace.ops(0x4000) == [FlashOp("erase", 0x1000, 4096), FlashOp("erase", 0x2000, 4096)]


def test_bad_cut_points_are_named_with_what_the_step_made() -> None:
    with pytest.raises(
        StepFailed, match="cut point 30 is past the step's last flash operation: it made 22"
    ):
        cut_points(_cut(at=[3, 30]), _ops(), _table())
    with pytest.raises(StepFailed, match="made no flash operations: there is nothing to cut"):
        cut_points(_cut(sweep=3), [], _table())
    with pytest.raises(StepFailed, match="no partition 'vfs'"):
        cut_points(_cut(within="vfs"), _ops(), _table())


def _scenario(tmp_path: Path, steps: str) -> Path:
    path = tmp_path / "cut.yaml"
    path.write_text(
        "title: t\nsource: s\nmatrix: {flash_size: [4MB], firmware: [ESP32_GENERIC-OTA@v1.25.0]}\n"
        f"steps:\n{steps}"
    )
    return path


BOOT = "  - boot: prompt\n"


def _power_cut(args: str) -> str:
    return f"  - power_cut: {{{args}}}\n"


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (BOOT + _power_cut("ota: {payload: app}, sweep: 4") + "  - assert_booted: ota_0\n",
         "`power_cut` leaves the board off: make the next step `boot` (the power-on after it)"),
        (BOOT + _power_cut("ota: {payload: app}, sweep: 4"),
         "`power_cut` leaves the board off: make the next step `boot`"),
        (BOOT + _power_cut("ota: {payload: app, method: staged}, sweep: 4") + BOOT,
         "a staged write makes no emulated flash writes"),
        (BOOT + _power_cut("ota: {payload: app}, repl: x, sweep: 4") + BOOT,
         "power_cut names the one step it interrupts"),
        (BOOT + _power_cut("sweep: 4") + BOOT, "power_cut names the one step it interrupts"),
        (BOOT + _power_cut("ota: {payload: app}, sweep: 4, at: [1]") + BOOT,
         "power_cut needs one of `sweep: K`"),
        (BOOT + _power_cut("ota: {payload: app}, sweep: 4") + BOOT + BOOT,
         "need exactly one `boot` step"),
        (BOOT + _power_cut("ota: {payload: app}, by: time, at: [3]") + BOOT,
         "a cut by time takes `sweep: K`"),
        (BOOT + _power_cut("ota: {payload: app}, by: time, sweep: all") + BOOT,
         "a cut by time takes `sweep: K`"),
        (BOOT + _power_cut("ota: {payload: app}, sweep: 4, torn: true") + BOOT,
         "torn: true cuts inside every operation: it takes `sweep: all`"),
        (BOOT + _power_cut("ota: {payload: app}, at: [3], depth: 2") + BOOT,
         "depth: 2 cuts every operation of the power-ons too: it takes `sweep: all`"),
        (BOOT + _power_cut("ota: {payload: app}, sweep: all, depth: 3") + BOOT, "depth"),
    ],
)  # fmt: skip
def test_a_malformed_power_cut_is_one_line_naming_the_problem(
    tmp_path: Path, steps: str, message: str
) -> None:
    with pytest.raises(scenario_format.ScenarioError) as error:
        scenario_format.load(_scenario(tmp_path, steps))
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(str(tmp_path / "cut.yaml"))


def test_a_power_cut_with_its_power_on_loads_and_needs_what_its_step_needs(tmp_path: Path) -> None:
    path = _scenario(tmp_path, "  - boot: prompt\n  - power_cut: {ota: {payload: app}, sweep: 4}\n"
                               "  - boot: prompt\n  - assert_booted: [ota_0, ota_1]\n")  # fmt: skip
    loaded = scenario_format.load(path)
    assert "ota" in loaded.needs()


# -- in QEMU ---------------------------------------------------------------------------

WRITER = (
    "import esp32\n"
    "p = esp32.Partition.find(esp32.Partition.TYPE_APP, label='ota_1')[0]\n"
    "for i in range(48):\n"
    "    p.writeblocks(i, bytes([i]) * 4096)\n"
)
OPS_OF_WRITER = 48 * (1 + 4096 // 64)  # an erase and 64 page programs per block, at most


def test_a_rebuilt_flash_equals_a_live_cut_at_the_same_operation(
    qemu, fw, build_image, tmp_path
) -> None:
    """A live cut: the CPUs stopped in the middle of a device-side write (QMP `stop`, so
    the writes in flight reach the file), then the power cut. Rebuilt: the flash before,
    with the recorded operations applied on the host. Same bytes, and the same boot."""
    image = build_image(fw("OTA-20250415-v1.25.0"), "4MB")
    options = BootOptions(policy.for_image(image), qemu=qemu, run_dir=tmp_path / "live",
                          record_flash=True)  # fmt: skip
    with device.boot(image, options) as dev:
        dev.wait_prompt(30)
        trace = dev.board.record_flash(True)
        before = dev.flash.read_bytes()
        dev.repl.exec_start(WRITER)
        deadline = time.monotonic() + 30
        while len(trace.ops(len(before))) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)  # cut well inside the loop, wherever the host's speed puts it
        dev.board.pause()
        live = dev.flash.read_bytes()
        ops = trace.ops(len(before))
        dev.board.power_cut()
        assert 100 < len(ops) < OPS_OF_WRITER, len(ops)  # cut in the middle of the write
        rebuilt = dict(states(before, ops, [len(ops)]))[len(ops)]
        assert rebuilt == live
        outcomes = []
        for flash in (live, rebuilt):
            dev.flash.write_bytes(flash)
            mark = len(dev.board.log.lines)
            dev.power_on()
            dev.wait_prompt(30)
            said = [re.sub(r"\(\d+\) ", "", line) for line in dev.board.log.lines[mark:]
                    if line.startswith(("E (", "W ("))]  # fmt: skip
            outcomes.append((dev.running_partition(), said))
            dev.board.power_cut()
        assert outcomes[0] == outcomes[1]
        assert outcomes[0][0] == "ota_0"  # ota_1 was being written, never selected


FILE_CUT = """title: t
source: s
matrix: {{flash_size: [4MB], firmware: [ESP32_GENERIC@v1.27.0]}}
steps:
  - boot: prompt
  - repl: "with open('/s.txt', 'w') as f: f.write('old.' * 1500)"
  - power_cut:
      repl: "with open('/s.txt', 'w') as f: f.write('new!' * 1500)"
      sweep: 2
  - boot: prompt
  - repl: {{code: "print(open('/s.txt').read() == 'old.' * 1500)", expect: "{expect}"}}
"""


def _file_cut(tmp_path: Path, selector, qemu, expect: str):
    from harness.scenario import plan, runner

    path = tmp_path / "cut.yaml"
    path.write_text(FILE_CUT.format(expect=expect))
    cell = plan.cells(scenario_format.load(path), selector, plan.RunOptions())[0]
    return runner.run_cell(cell, runner.Setup(tmp_path / "art", qemu))


def test_a_sweep_gives_every_point_its_outcome_and_names_the_first_that_failed(
    qemu, firmware_selector, tmp_path
) -> None:
    """A file rewrite cut at 0, at 2 spread points and after its last operation: the file
    reads old before littlefs commits, new after. Asserting `old` everywhere fails at the
    points after the commit, and only there; the message names the first and how to rerun it."""
    result = _file_cut(tmp_path, firmware_selector, qemu, "True")
    assert result.status == "failed"
    assert {c.fault for c in result.faults} == {"power_cut"}
    points = [c.point.key for c in result.faults]  # operations done before the power went
    assert points[0] == 0 and points == sorted(points) and len(points) >= 4
    assert result.faults[0].status == "passed"  # nothing written yet: the old file
    assert result.faults[-1].status == "failed"  # everything written: the new file
    statuses = [c.status for c in result.faults]
    assert statuses == sorted(statuses, key=lambda s: s == "failed")  # old, then new: never mixed
    first = next(c for c in result.faults if c.status == "failed")
    assert f"rerun just that point with `at: [{first.point.key}]`" in result.message
    assert first.point.label in result.message
    assert all(c.booted == "factory" for c in result.faults)
    recorded = load_cell(Path(result.artifacts)).detail("power_cut", Recorded)
    assert recorded is not None and recorded.points == [c.point for c in result.faults]
    assert recorded.of == points[-1]  # the last point: after every operation
    assert not running_qemus(str(tmp_path))
    # the report draws each point: the flash it left, the cut where the chip stopped
    from harness.frontends.html import write_report

    html = write_report(tmp_path / "art", cells=[Path(result.artifacts)]).read_text()
    assert html.count('<td class="pointmap"><svg') == len(result.faults)
    assert html.count('class="pointat"') == len(result.faults)


def test_a_cut_by_time_cuts_live_reruns_and_reports_what_it_found(
    qemu, firmware_selector, tmp_path
) -> None:
    """Where QEMU cannot count flash operations the power goes at moments instead: each
    point a live rerun of the step, cut that far into it, its flash taken as found."""
    from harness.scenario import plan, runner

    path = tmp_path / "cut.yaml"
    text = FILE_CUT.format(expect="True").replace("sweep: 2", "by: time\n      sweep: 1")
    path.write_text(text.replace("== 'old.' * 1500", "in ('old.' * 1500, 'new!' * 1500)"))
    cell = plan.cells(scenario_format.load(path), firmware_selector, plan.RunOptions())[0]
    result = runner.run_cell(cell, runner.Setup(tmp_path / "art", qemu))
    assert result.status == "passed", result.message
    recorded = result.detail("power_cut", Recorded)
    assert recorded is not None and recorded.by == "time"
    assert len(result.faults) == 2  # a moment, and the whole step
    whole = result.faults[-1].point
    assert [c.point.key for c in result.faults] == sorted(c.point.key for c in result.faults)
    assert whole.key == recorded.of and "cut by time: as asked" in whole.label
    assert result.faults[-1].changed  # the whole rewrite changed the filesystem
    assert not running_qemus(str(tmp_path))


# -- distinct states, and the classes a power-on cannot tell apart ----------------------


def test_an_operation_that_changes_nothing_or_comes_back_adds_no_state() -> None:
    before = b"\xff" * 0x3000
    ops = [
        FlashOp("program", 0x10, 2, b"\xff\xff"),  # programs no bit: no state
        FlashOp("program", 0x10, 2, b"\x00\x01"),  # new
        FlashOp("program", 0x10, 2, b"\x00\x01"),  # the bits are already 0: no state
        FlashOp("erase", 0x2000, 0x1000),  # erased already: no state
        FlashOp("erase", 0, 0x1000),  # back to the flash before: the same state as 0
        FlashOp("program", 0x1000, 1, b"\x7f"),  # new
    ]
    assert distinct_points(before, ops) == [0, 2, 6]


def test_sectors_are_hashed_by_their_number_so_swapped_contents_differ() -> None:
    before = b"\xff" * 0x2000
    ops = [FlashOp("program", 0, 1, b"\x00"), FlashOp("erase", 0, 0x1000),
           FlashOp("program", 0x1000, 1, b"\x00")]  # fmt: skip
    assert distinct_points(before, ops) == [0, 1, 3]


def _drive(before: bytes, ops: list[FlashOp], reads: dict[int, ReadSet | None]) -> Reduction:
    """`reduce`, sent for each booted state the read-set `reads` gives its point."""
    into = Reduction()
    walk = reduce(before, ops, into)
    sent: ReadSet | None = None
    booted = []
    with contextlib.suppress(StopIteration):
        while True:
            n, flash = walk.send(sent)
            assert flash == dict(states(before, ops, [n]))[n]
            booted.append(n)
            sent = reads.get(n)
    assert booted == [c.rep for c in into.classes]
    return into


def test_a_state_joins_the_class_of_a_booted_one_it_agrees_with_on_every_byte_read() -> None:
    """The power-on from state 0 read otadata (sector 0) and nothing of the slot (sector
    2): writing the slot makes states it cannot tell apart; otadata's write does not."""
    before = b"\x00" * 0x20 + b"\xff" * (0x3000 - 0x20)
    slot = [FlashOp("program", 0x2000 + 16 * i, 16, bytes([i]) * 16) for i in range(5)]
    ops = [*slot, FlashOp("erase", 0, 0x1000), FlashOp("program", 0, 4, b"\x01\x00\x00\x00")]
    otadata = ReadSet.of([(0, 0x20)])
    into = _drive(before, ops, {0: otadata, 6: otadata | ReadSet.of([(0x2000, 0x2050)]),
                                7: otadata})  # fmt: skip
    assert [(c.rep, c.states) for c in into.classes] == [(0, [0, 1, 2, 3, 4, 5]), (6, [6]),
                                                          (7, [7])]  # fmt: skip
    assert into.distinct == 8
    assert into.class_of == [0, 0, 0, 0, 0, 0, 1, 2]


def test_a_state_that_differs_on_a_byte_read_is_booted_and_unknown_reads_keep_it_alone() -> None:
    before = b"\xff" * 0x2000
    ops = [FlashOp("program", 0x1000 + i, 1, b"\x00") for i in range(4)]
    into = _drive(before, ops, {0: ReadSet.of([(0x1002, 0x1003)]), 3: None})
    # 1, 2 join 0 (byte 0x1002 unread by them); 3 programs it: booted; 4 joins nothing
    assert [c.rep for c in into.classes] == [0, 3, 4]
    assert into.classes[0].states == [0, 1, 2] and into.classes[1].read == -1


def test_a_state_that_changes_back_a_byte_read_rejoins_the_class() -> None:
    before = b"\xff" * 0x2000
    ops = [FlashOp("program", 0, 1, b"\x00"), FlashOp("erase", 0, 0x1000),
           FlashOp("program", 1, 1, b"\x00")]  # fmt: skip
    into = _drive(before, ops, {0: ReadSet.of([(0, 1)]), 1: ReadSet.of([(0, 1)])})
    assert [(c.rep, c.states) for c in into.classes] == [(0, [0, 3]), (1, [1])]
    assert into.class_of == [0, 1, 0, 0]  # 2 is state 0 again


def test_what_a_power_on_read_is_read_from_qemus_trace() -> None:
    text = (
        "m25p80_read_byte [0x55] Read byte 0x8000=0xaa\n"
        "m25p80_read_byte [0x55] Read byte 0x8001=0x50\n"
        "memory_region_ops_write cpu 0 mr 0x5 addr 0x3ff10004 value 0x3 size 4 name "
        "'misc.esp32.dport'\n"  # PRO DROM0 entry 1 -> page 3
        "memory_region_ops_write cpu 0 mr 0x5 addr 0x3ff12100 value 0x105 size 4 name "
        "'misc.esp32.dport'\n"  # APP IRAM0 entry, invalid
        "memory_region_ops_write cpu 0 mr 0x5 addr 0x3ff00040 value 0x28 size 4 name "
        "'misc.esp32.dport'\n"  # a DPORT register, not the MMU
        "memory_region_ops_write cpu 0 mr 0x6 addr 0x3ff03000 value 0x7 size 4 name "
        "'misc.esp32.sha'\n"
    )
    reads = parse_reads(text, 0x400000)
    assert reads.spans == ((0, 0x10000), (0x30000, 0x40000))  # 0x8000 lies in page 0
    assert parse_reads("m25p80_read_byte [0x1] Read byte 0x20000=0x1\n", 0x400000).spans == (
        (0, 0x10000), (0x20000, 0x20001))  # fmt: skip


def test_a_coverage_line_says_every_state_or_what_was_sampled() -> None:
    every = Recorded(of=22752, distinct=310, every=True, by_reads=True,
                     points=[Cut(n, 22752).point() for n in (0, 5, 9)])  # fmt: skip
    assert coverage_line(every) == (
        "22,752 operations, 310 distinct states, 3 power-ons, every state covered (3 booted, "
        "307 read the same as a booted one by every byte its power-on read)"
    )
    sampled = Recorded(of=22752, distinct=310, points=[Cut(n, 22752).point() for n in (0, 5, 6)])
    assert coverage_line(sampled) == (
        "22,752 operations, 310 distinct states, 3 power-ons, sampled: the states after "
        "operations 0, 5-6 (`sweep: all` covers every state)"
    )


def test_a_torn_erase_keeps_some_old_zero_bits_and_a_torn_program_leaves_some_ones() -> None:
    old = bytes(range(256)) * 16  # a sector of mixed bits
    erase = FlashOp("erase", 0, 4096)
    cut = torn.torn(old, erase, torn.rng_for(0, 1))
    zeros = sum(8 - bin(b).count("1") for b in old)
    kept = sum(8 - bin(b).count("1") for b in cut)
    assert all((~c & 0xFF) & o == 0 for c, o in zip(cut, old, strict=True))  # only old 0s
    assert 0.035 < kept / zeros < 0.055  # 4.5%, the model's figure
    assert cut == torn.torn(old, erase, torn.rng_for(0, 1))  # the seed decides
    assert cut != torn.torn(old, erase, torn.rng_for(1, 1))
    program = FlashOp("program", 0, 64, bytes(64))
    half = torn.torn(b"\xff" * 64, program, torn.rng_for(0, 2))
    ones = sum(bin(b).count("1") for b in half)
    assert 0.35 < ones / 512 < 0.65  # each bit due to go 0 still 1 with p 1/2


def test_a_torn_state_joins_a_class_only_by_the_bytes_read() -> None:
    """A torn program in the unread slot joins state 0's class; torn inside otadata's
    program, a byte read differs: booted."""
    before = b"\xff" * 0x3000
    ops = [FlashOp("program", 0x2000, 16, bytes(16)), FlashOp("program", 0, 4, bytes(4))]

    def tear(old: bytes, op: FlashOp, number: int) -> bytes:
        return torn.torn(old, op, torn.rng_for(0, number))

    into = Reduction()
    walk = reduce(before, ops, into, tear)
    booted, sent = [], None
    with contextlib.suppress(StopIteration):
        while True:
            n, _ = walk.send(sent)
            booted.append(n)
            sent = ReadSet.of([(0, 0x10)])
    assert booted == [0, -2, 2]  # state 0; torn inside op 2 (otadata); after op 2
    assert into.classes[0].states == [0, -1, 1] and into.torn == 2


def test_depth_2_cuts_what_each_booted_power_on_wrote_and_keeps_its_class_exact() -> None:
    """The power-on from state 0 read otadata (sector 0xd) and wrote it (the bootloader's
    NEW -> PENDING_VERIFY, say): its two operations are cut too, and a later state joins
    state 0's class only if it agrees with it on what those second power-ons read."""
    before = bytearray(b"\xff" * 0x20000)
    before[0x8000 : 0x8000 + 32] = (
        formats.PartitionTable(()).to_bytes()[:32] if False else b"\xff" * 32
    )
    ops = [FlashOp("program", 0x10000 + 16 * i, 16, bytes(16)) for i in range(3)]
    recovery = (FlashOp("erase", 0xD000, 0x1000), FlashOp("program", 0xD000, 4, b"\x01\0\0\0"))
    recorded = Recorded(of=3, before=before, ops=ops, every=True, by_reads=True, depth=2)
    walk = PowerCut().flashes(recorded)
    otadata = ReadSet.of([(0xD000, 0xD020)])
    second_read = otadata | ReadSet.of([(0x10010, 0x10011)])  # a second power-on read op 2's byte
    booted = []
    sent = None
    with contextlib.suppress(StopIteration):
        while True:
            point, _ = walk.send(sent)
            booted.append(point.short)
            first = point.key == 0
            sent = Seen(otadata if first else second_read, recovery if first else ())
    # state 0, its recovery's program (the erase of an erased sector adds no state), then
    # op 2 changed a byte a second power-on read: booted, with its own second cuts
    assert booted[:2] == ["0/3", "0/3+2/2"]
    assert "2/3" in booted
    assert recorded.second >= 1 and recorded.second_ops >= 2
    assert "second cuts" in recorded.coverage
