"""Old builds that stall on a shared host get it to themselves; the rest share it."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.emulator import device, hostlock, policy
from harness.emulator.device import BootOptions
from harness.errors import GuestStalled


def test_an_exclusive_holder_keeps_others_out_and_is_not_starved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HARNESS_LOCKS", str(tmp_path))
    events: list[str] = []
    shared_in = threading.Event()

    def shared(name: str, hold: float) -> None:
        with hostlock.emulation_slot(alone=False):
            events.append(f"{name} in")
            shared_in.set()
            time.sleep(hold)
            events.append(f"{name} out")

    def alone() -> None:
        with hostlock.emulation_slot(alone=True):
            events.append("alone in")
            time.sleep(0.2)
            events.append("alone out")

    first = threading.Thread(target=shared, args=("a", 0.5))
    first.start()
    assert shared_in.wait(5)
    waiter = threading.Thread(target=alone)
    waiter.start()
    time.sleep(0.1)  # the exclusive one now waits; a new shared one must queue behind it
    late = threading.Thread(target=shared, args=("b", 0.0))
    late.start()
    for t in (first, waiter, late):
        t.join(10)
    assert events == ["a in", "a out", "alone in", "alone out", "b in", "b out"]
    assert caplog.messages == [  # each waiter says why it waits
        "waiting for the host: other emulations are running",
        "waiting for the host: an emulation that must run alone is running",
    ]


def test_a_thread_holding_a_share_gets_a_second_one_past_a_waiting_exclusive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test that boots a second board beside its first must not queue behind an
    exclusive waiter that waits for the first: that deadlocked a run (bench/README.md)."""
    monkeypatch.setenv("HARNESS_LOCKS", str(tmp_path))
    events: list[str] = []
    first_in, waiter_started = threading.Event(), threading.Event()

    def two_boards() -> None:
        with hostlock.emulation_slot(alone=False):
            first_in.set()
            assert waiter_started.wait(5)
            time.sleep(0.2)  # the exclusive waiter now holds the turnstile
            with hostlock.emulation_slot(alone=False):
                events.append("second board")
            events.append("second off")  # still inside the first share: "alone" waits

    def alone() -> None:
        waiter_started.set()
        with hostlock.emulation_slot(alone=True):
            events.append("alone")

    holder = threading.Thread(target=two_boards, daemon=True)
    holder.start()
    assert first_in.wait(5)
    waiter = threading.Thread(target=alone, daemon=True)
    waiter.start()
    holder.join(10)
    waiter.join(10)
    assert not holder.is_alive() and not waiter.is_alive(), "deadlocked"
    assert events == ["second board", "second off", "alone"]


@getattr(pytest.mark, "4mb")
def test_a_build_that_stalls_on_a_shared_host_boots_beside_another(qemu, fw, build_image) -> None:
    """v1.21.0 SPIRAM (ESP-IDF 5.0.2) stalled in 9 of 10 paired boots without the lock.

    With it, two threads booting it never emulate at once, stalled attempts included.
    Alone it still deadlocks now and then (docs/known-behaviour.md), so an attempt may end
    in that named stall, never in anything else, and is retried as the policy retries it
    until each of the four boots reaches the REPL."""
    image = build_image(fw("SPIRAM-20231005-v1.21.0"), "4MB")

    def boot(_: int) -> list[tuple[float, float, str]]:
        """Boot to the REPL, as the policy does: a named stall is retried, nothing else."""
        runs = []
        for _attempt in range(1 + policy.STALLING_BUILD_RETRIES):
            with device.boot(
                image, BootOptions(policy.for_image(image, watchdogs=False), qemu=qemu)
            ) as dev:
                start = time.monotonic()
                try:
                    dev.wait_prompt(30)
                    runs.append((start, time.monotonic(), dev.running_partition()))
                    return runs
                except GuestStalled as exc:
                    assert "interrupt level" in str(exc), exc  # where QEMU says the CPUs are
                    runs.append((start, time.monotonic(), "stalled"))
        return runs

    with ThreadPoolExecutor(2) as pool:
        runs = sorted(itertools.chain.from_iterable(pool.map(boot, range(4))))
    for before, after in itertools.pairwise(runs):
        assert before[1] <= after[0], (
            f"two emulations of a build that must run alone overlapped: {runs}"
        )
    outcomes = [r[2] for r in runs]
    assert set(outcomes) <= {"factory", "stalled"}, outcomes
    assert outcomes.count("factory") == 4, outcomes
