"""Every console wait that runs out asks QEMU whether the guest is stuck, and one policy
decides what is retried (issue: a clean clone's `make test` is green every time).

A guest stopped over QMP during a wait of each kind (start-up, reset, power-on after a
cut, expect, REPL exec, OTA) must fail as GuestStalled with QEMU's words; a guest that
runs but never says what was awaited (idle at its prompt, or in `while True: pass`) must
stay a DeviceTimeout, which no retry reruns.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.emulator import device, ota, policy
from harness.emulator.device import BootOptions
from harness.emulator.qemu import CpuState
from harness.emulator.stall import Diagnosis
from harness.errors import DeviceTimeout, GuestStalled, QemuCrashed, StepFailed

MB4 = getattr(pytest.mark, "4mb")
IDLE0, IDLE1 = CpuState(0, 0x400D_1234, 0), CpuState(1, 0x4008_1DA0, 0)  # waiti, level 0
PAUSED = "QEMU's machine is not running (status 'paused')"
STOPPED = "QEMU's machine is not running"  # 'paused'; 'prelaunch' after a system_reset


# -- the rule, on what QEMU reports ------------------------------------------------------
def test_a_paused_machine_is_stalled_whatever_its_cpus_show() -> None:
    assert Diagnosis.of("paused", [[IDLE0, IDLE1]] * 4, 1.0) == Diagnosis(True, PAUSED)


def test_the_old_builds_deadlock_is_stalled() -> None:
    """The PCs read off a deadlocked v1.20.0 (docs/known-behaviour.md)."""
    deadlock = [CpuState(0, 0x4008_14C0, 5), CpuState(1, 0x4008_1DA0, 3)]
    found = Diagnosis.of("running", [deadlock] * 4, 1.0)
    assert found.stalled
    assert "CPU0 at 0x400814c0, interrupt level 5 (in a high-level interrupt handler" in found.words
    assert "CPU1 at 0x40081da0, interrupt level 3 (at one PC with interrupts masked" in found.words


def test_a_cpu_that_moves_inside_a_high_level_handler_is_still_stuck() -> None:
    spins = [[CpuState(0, 0x4008_14C0 + 3 * i, 5), CpuState(1, 0x4008_1DA0, 3)] for i in range(4)]
    assert Diagnosis.of("running", spins, 1.0).stalled


def test_one_cpu_stuck_while_the_other_runs_is_not_a_stall() -> None:
    """After machine.reset() the APP CPU spins in the ROM at one PC, masked, as on silicon,
    while the PRO CPU runs the bootloader."""
    rom = CpuState(1, 0x4000_76DD, 15, None)
    boots = [[CpuState(0, 0x4008_0400 + 0x20 * i, 0), rom] for i in range(4)]
    assert not Diagnosis.of("running", boots, 1.0).stalled


def test_idle_cpus_in_waiti_are_not_stuck() -> None:
    """An idle guest sits at one PC at level 0 on both CPUs: the firmware waiting, not a
    stall, so a line that never comes from it is the firmware's answer."""
    found = Diagnosis.of("running", [[IDLE0, IDLE1]] * 4, 1.0)
    assert not found.stalled
    assert found.words.startswith("the emulated CPUs are running")


def test_a_cpu_whose_thread_did_not_run_is_starved_not_stuck() -> None:
    """On a loaded host a vCPU thread that is not scheduled keeps its PC too: stuck needs
    the thread to have burnt host time meanwhile, as a spin does."""

    def looks(ran: float) -> list[list[CpuState]]:
        return [
            [CpuState(0, 0x4009_5A07, 3, 7.0 + ran * i), CpuState(1, 0x4008_1DA0, 5, 3 + 0.2 * i)]
            for i in range(5)
        ]

    assert not Diagnosis.of("running", looks(0.01), 1.0).stalled
    assert Diagnosis.of("running", looks(0.2), 1.0).stalled


def test_a_masked_cpu_that_moves_is_not_stuck() -> None:
    moving = [[CpuState(0, 0x4008_0000 + 0x40 * i, 3), CpuState(1, 0x4008_1DA0, 5)]
              for i in range(4)]  # fmt: skip
    assert not Diagnosis.of("running", moving, 1.0).stalled


def test_no_answer_from_qemu_is_not_taken_for_a_stall() -> None:
    found = Diagnosis.of(None, [[], []], 1.0)
    assert not found.stalled
    assert found.words == "QEMU did not say where its CPUs are"


# -- the policy ----------------------------------------------------------------------------
def test_retries_off_means_none_even_for_builds_that_stall() -> None:
    assert policy.retry_count(0, stalls=True) == 0
    assert policy.retry_count(1, stalls=True) == policy.STALLING_BUILD_RETRIES
    assert policy.retry_count(1, stalls=False) == 1
    assert policy.retryable(GuestStalled("x")) and policy.retryable(QemuCrashed("x"))
    assert not policy.retryable(DeviceTimeout("x")) and not policy.retryable(StepFailed("x"))


PLUGIN_TEST = """\
import pytest
from pathlib import Path
from harness.errors import DeviceTimeout, GuestStalled

def _count(name):
    p = Path(__file__).parent / name
    p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else "1")

@pytest.mark.stalling_build
def test_old_build(qemu):
    _count("old")
    raise GuestStalled("stuck")

def test_new_build(qemu):
    _count("new")
    raise GuestStalled("stuck")

def test_firmware_answer(qemu):
    _count("answer")
    raise DeviceTimeout("the guest ran and never said it")
"""


@pytest.mark.parametrize(("retries", "old", "new"), [
    ("0", 1, 1), ("1", 1 + policy.STALLING_BUILD_RETRIES, 2),
])  # fmt: skip
def test_the_plugin_retries_tests_that_boot_qemu_as_the_policy_says(
    qemu: Path, tmp_path: Path, retries: str, old: int, new: int
) -> None:
    """--retries N (the Makefile's RETRIES) is the only knob: 0 reruns nothing, not even
    the builds that stall; a DeviceTimeout is never rerun."""
    (tmp_path / "test_x.py").write_text(textwrap.dedent(PLUGIN_TEST))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--strict-markers",
         f"--qemu={qemu}", f"--retries={retries}", str(tmp_path / "test_x.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "3 failed" in run.stdout, run.stdout + run.stderr
    counts = {n: int((tmp_path / n).read_text()) for n in ("old", "new", "answer")}
    assert counts == {"old": old, "new": new, "answer": 1}, run.stdout


# -- each kind of wait, on a real guest -----------------------------------------------------
@pytest.fixture
def image(fw, build_image) -> Path:
    return build_image(fw("OTA-20250415-v1.25.0"), "4MB")


def _boot(image: Path, qemu: Path, tmp_path: Path) -> device.Device:
    return device.boot(image, BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path))


def _stalled(error: pytest.ExceptionInfo[DeviceTimeout], during: str) -> None:
    assert error.type is GuestStalled, error.value
    first = str(error.value).splitlines()[0]
    assert during in first and STOPPED in first, error.value
    assert "serial log" in str(error.value)


@MB4
def test_start_up_reset_and_power_on_stopped_over_qmp_are_stalls(qemu, image, tmp_path) -> None:
    with _boot(image, qemu, tmp_path) as dev:
        dev.board.pause()  # before MicroPython is up
        with pytest.raises(DeviceTimeout) as error:
            dev.wait_prompt(3)
        _stalled(error, "boot to the >>> prompt")

        mark = dev.console.mark()
        dev.board.hard_reset()  # system_reset leaves a stopped machine stopped
        with pytest.raises(DeviceTimeout) as error:
            dev.await_boot(mark, timeout=3)
        _stalled(error, "during reset")

        dev.board.power_cut()
        dev.power_on()
        dev.board.pause()
        with pytest.raises(DeviceTimeout) as error:
            dev.wait_prompt(3)
        _stalled(error, "boot to the >>> prompt")


@MB4
def test_expect_exec_ota_and_soft_reset_stopped_over_qmp_are_stalls(
    qemu, image, fw, tmp_path
) -> None:
    with _boot(image, qemu, tmp_path) as dev:
        dev.wait_prompt(30)
        dev.board.pause()
        with pytest.raises(DeviceTimeout) as error:
            dev.console.expect("never printed", 2, during="a scenario's expect")
        _stalled(error, "a scenario's expect")
        with pytest.raises(DeviceTimeout) as error:
            dev.repl.exec("print(1)", timeout=2)
        _stalled(error, "raw REPL")
        with pytest.raises(DeviceTimeout) as error:
            ota.update(dev, fw("OTA-20250415-v1.25.0"), timeout=3)
        _stalled(error, "")
        with pytest.raises(DeviceTimeout) as error:
            dev.reset("soft", timeout=3)
        _stalled(error, "")


@MB4
def test_a_guest_that_runs_but_never_answers_is_a_device_timeout(qemu, image, tmp_path) -> None:
    """Idle at its prompt (both CPUs mostly in waiti), or busy in a loop: the guest runs,
    so the wait's end is the firmware's answer, never retried."""
    with _boot(image, qemu, tmp_path) as dev:
        dev.wait_prompt(30)
        with pytest.raises(DeviceTimeout) as error:
            dev.console.expect("never printed", 2, during="an idle guest")
        assert error.type is DeviceTimeout, error.value
        assert "the emulated CPUs are running" in str(error.value)

        dev.repl.exec_start("while True:\n    pass")
        with pytest.raises(DeviceTimeout) as error:
            dev.repl.exec_finish(2)
        assert error.type is DeviceTimeout, error.value
        assert "the emulated CPUs are running" in str(error.value)
        assert not policy.retryable(error.value)


DEEP_CALLS = """\
def f(n):
    return 0 if n == 0 else 1 + f(n - 1)
t = 0
for i in range(6000):
    t += f(20)
print('sum', t)
"""  # about 2 s of calls twenty deep, under QEMU


@MB4
def test_looking_at_the_cpus_while_the_guest_makes_calls_leaves_it_intact(
    qemu, image, tmp_path
) -> None:
    """QEMU's xtensa register dump writes the register file from the monitor's thread: read
    while the CPU runs, it broke a guest making windowed calls (a panic or a hang within
    seconds, in every one of 4 tries). Every look stops the machine first: the guest computes
    on."""
    with _boot(image, qemu, tmp_path) as dev:
        dev.wait_prompt(30)
        dev.repl.exec_start(DEEP_CALLS)
        looks, until = [], time.monotonic() + 2
        while time.monotonic() < until:
            looks.append(dev.board.cpu_states())
        assert all(len(cpus) == 2 for cpus in looks), looks[-1]
        assert dev.board.vm_status() == "running"  # every look resumed it
        out, err = dev.repl.exec_finish(60)
        assert (out.strip(), err) == ("sum 120000", "")
