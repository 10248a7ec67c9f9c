"""`sweep: all` is exact. A small update (littlefs rewriting a file, then set_boot()
selecting ota_1, which holds the app) is cut in every distinct flash state, inside
each operation (torn), and in every state of what each of those power-ons wrote
(`depth: 2`: the bootloader's otadata write at the first boot of ota_1); every one of
those states is booted (`sweep: distinct`, the brute force) and each outcome must be
its class's. A state joins a class only when it agrees with the class's booted state
on every byte that power-on read, so this checks that the read-set (QEMU's flash reads
and cache MMU pages) misses nothing the firmware looks at. Minutes of emulation: run by
`make test-powerloss`."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.scenario import format as scenario_format
from harness.scenario import plan, runner
from harness.scenario.everystate import SECOND
from harness.scenario.powercut import Recorded
from harness.scenario.results import CellResult

UPDATE = """title: t
source: s
matrix: {{flash_size: [4MB], firmware: [ESP32_GENERIC-OTA@v1.25.0]}}
image:
  flash: {{ota_1: app}}
steps:
  - boot: prompt
  - repl: "with open('/s.txt', 'w') as f: f.write('old.' * 300)"
  - power_cut:
      repl: "import esp32\\nwith open('/s.txt', 'w') as f: f.write('new!' * 300)\\n\\
        esp32.Partition.find(esp32.Partition.TYPE_APP, label='ota_1')[0].set_boot()"
      sweep: {sweep}
      torn: true
      depth: 2
  - boot: prompt
  - repl: {{code: "print(open('/s.txt').read() == 'old.' * 300)", expect: "True"}}
  - assert_booted: [ota_0, ota_1]
"""


def _run(tmp_path: Path, selector, qemu, sweep: str) -> tuple[CellResult, Recorded]:
    path = tmp_path / f"{sweep}.yaml"
    path.write_text(UPDATE.format(sweep=sweep))
    cell = plan.cells(scenario_format.load(path), selector, plan.RunOptions())[0]
    result = runner.run_cell(cell, runner.Setup(tmp_path / sweep, qemu))
    recorded = result.detail("power_cut", Recorded)
    assert recorded is not None and result.faults, result.message
    return result, recorded


@pytest.mark.slow
def test_every_state_booted_comes_to_its_class_outcome(qemu, firmware_selector, tmp_path) -> None:
    exact, classes = _run(tmp_path, firmware_selector, qemu, "all")
    brute, every = _run(tmp_path, firmware_selector, qemu, "distinct")
    assert (every.of, every.distinct) == (classes.of, classes.distinct)  # the same update
    assert every.torn == classes.torn > 0  # the same seed: the same torn states
    firsts = [o for o in brute.faults if o.point.key < SECOND]
    assert len(firsts) == every.distinct + every.torn  # each state booted once
    assert sum(c.states for c in classes.classes) == classes.distinct
    assert sum(c.torn for c in classes.classes) == classes.torn
    rep_outcome = {o.point.key: (o.status, o.booted) for o in exact.faults}
    class_of = {n: c.rep for c in classes.classes for a, b in c.operations
                for n in range(a, b + 1)}  # fmt: skip
    class_of |= {-k: c.rep for c in classes.classes for a, b in c.torn_in
                 for k in range(a, b + 1)}  # fmt: skip
    differ = [(o.point.key, (o.status, o.booted), rep_outcome[class_of[o.point.key]])
              for o in firsts
              if (o.status, o.booted) != rep_outcome[class_of[o.point.key]]]  # fmt: skip
    assert not differ, differ
    # depth 2: each state's second cuts come to what its class's booted state's did
    assert every.second > 0 and classes.second > 0

    def second(rec: Recorded) -> dict[tuple[int, int], int]:
        return {(c.first, m): c.booted for c in rec.second_classes for m in c.cuts}

    exact_second, brute_second = second(classes), second(every)
    brute_outcome = {o.point.key: (o.status, o.booted) for o in brute.faults}
    differ = [(s, m) for (s, m), key in brute_second.items()
              if brute_outcome[key] != rep_outcome[exact_second[(class_of[s], m)]]]  # fmt: skip
    assert not differ, differ
    both = {o.status for o in brute.faults}
    assert both == {"passed", "failed"}  # old file before littlefs commits, new after
    factor = len(brute.faults) / len(exact.faults)
    print(f"\n{classes.coverage}\nbrute force: {len(brute.faults)} power-ons; reduction "
          f"{factor:.1f}x")  # fmt: skip
    assert factor > 2
