"""Old builds that stall on a shared host get it to themselves; the rest share it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import device, hostlock


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


@getattr(pytest.mark, "4mb")
def test_a_build_that_stalls_on_a_shared_host_boots_beside_another(qemu, fw, build_image) -> None:
    """v1.21.0 SPIRAM (ESP-IDF 5.0.2) stalled in 9 of 10 paired boots without the lock."""
    image = build_image(fw("SPIRAM-20231005-v1.21.0"), "4MB")

    def boot(_: int) -> str:
        with device.boot(image, qemu=qemu) as dev:
            dev.wait_prompt(30)
            return dev.running_partition()

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(boot, range(4))) == ["factory"] * 4
