"""Host CPU per emulated CPU over one reset: `machine.reset()` against QMP `system_reset`.

Why two workers on two cores do not reach 2x: a QEMU uses more than a host core while
its guest reboots. This boots one image, then resets it each way `--repeat` times and
reads, from /proc, the CPU time of each vCPU thread (QMP `query-cpus-fast` names them)
and of the rest of QEMU, from the reset to the `>>>` prompt. Prints a table and a
key=value line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.emulator import device, policy
from harness.emulator.device import BootOptions
from harness.flash import images
from harness.flash.size import FlashSize
from harness.sources import manifest

HZ = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """thread id -> CPU seconds (user + system) so far."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / HZ
    return out


@dataclass
class Sample:
    wall_s: float
    cpu0_s: float
    cpu1_s: float
    rest_s: float


def measure(dev: device.Device, kind: device.ResetKind) -> Sample:
    machine = dev.board.machine
    pid = machine.proc.pid if machine.proc else 0
    qmp = machine.qmp
    assert qmp is not None
    vcpus = {c["cpu-index"]: c["thread-id"] for c in qmp.cmd("query-cpus-fast")}
    time.sleep(1.0)  # let the guest settle at its prompt
    before, start = thread_cpu(pid), time.monotonic()
    dev.reset(kind, timeout=60)
    after, wall = thread_cpu(pid), time.monotonic() - start
    used = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    cpu0, cpu1 = used.get(vcpus[0], 0.0), used.get(vcpus[1], 0.0)
    return Sample(wall, cpu0, cpu1, sum(used.values()) - cpu0 - cpu1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firmware", default="ESP32_GENERIC@v1.27.0")
    ap.add_argument("--flash-size", default="16MB")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    firmware = manifest.selector().entry(args.firmware).path
    recipe = images.Recipe(firmware, FlashSize.emulated(args.flash_size), layout="ota")
    built = images.build_image(recipe)
    print(f"{firmware.name} at {args.flash_size}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}, {time.strftime('%F')}")  # fmt: skip
    print(f"  {'reset':<26}{'wall':>8}{'CPU 0':>8}{'CPU 1':>8}{'rest':>8}{'cores':>7}")
    results: dict[str, list[Sample]] = {"soft": [], "hard": []}
    with device.boot(
        built.path, BootOptions(policy.for_image(built.path, watchdogs=False, alone=True))
    ) as dev:
        dev.wait_prompt(30)
        for _ in range(args.repeat):
            for kind in ("soft", "hard"):
                results[kind].append(measure(dev, kind))  # type: ignore[arg-type]
    line = []
    for kind, label in (("soft", "machine.reset() (soft)"), ("hard", "QMP system_reset (hard)")):
        rows = results[kind]
        wall = statistics.median(r.wall_s for r in rows)
        cpu0 = statistics.median(r.cpu0_s for r in rows)
        cpu1 = statistics.median(r.cpu1_s for r in rows)
        rest = statistics.median(r.rest_s for r in rows)
        cores = (cpu0 + cpu1 + rest) / wall
        print(f"  {label:<26}{wall:>7.2f}s{cpu0:>7.2f}s{cpu1:>7.2f}s{rest:>7.2f}s{cores:>7.2f}")
        line += [f"{kind}_wall_s={wall:.2f}", f"{kind}_cpu1_s={cpu1:.2f}",
                 f"{kind}_cores={cores:.2f}"]  # fmt: skip
    print(" ".join(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
