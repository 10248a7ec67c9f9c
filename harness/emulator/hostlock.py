"""Sharing the host between emulations: most share it, some must have it to themselves.

Every QEMU the harness starts holds a share of one lock file for its whole run; a
guest measured to stall when the host is shared (harness.emulator.policy)
holds it exclusively. The locks are `flock`s on files in the user's cache, so they work
across processes (pytest-xdist workers, parallel `harness run`s) and the kernel drops
them when a process dies. A turnstile lock taken first stops new shared holders from
slipping past an exclusive one that waits, so it is never starved. A thread that already
holds a share and asks for another (a test that boots a second board beside its first)
skips the turnstile: queued behind an exclusive waiter that waits for its own first
share, it would wait for ever, and both with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator

from .. import paths

_log = logging.getLogger(__name__)
_held = threading.local()  # .slots: how many this thread holds now


@contextlib.contextmanager
def emulation_slot(alone: bool) -> Iterator[None]:
    """Hold a share of the host for one emulation, or all of it when `alone`."""
    folder = paths.user_cache("HARNESS_LOCKS", "locks")
    folder.mkdir(parents=True, exist_ok=True)
    turnstile = os.open(folder / "turnstile", os.O_RDWR | os.O_CREAT, 0o644)
    host = os.open(folder / "host", os.O_RDWR | os.O_CREAT, 0o644)
    nested = getattr(_held, "slots", 0) > 0 and not alone
    try:
        if not nested:
            fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            mode = fcntl.LOCK_EX if alone else fcntl.LOCK_SH
            try:
                fcntl.flock(host, mode | fcntl.LOCK_NB)
            except BlockingIOError:  # say why nothing happens yet, then wait
                _log.warning(
                    "waiting for the host: %s",
                    "other emulations are running"
                    if alone
                    else "an emulation that must run alone is running",
                )
                fcntl.flock(host, mode)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        _held.slots = getattr(_held, "slots", 0) + 1
        try:
            yield
        finally:
            _held.slots -= 1
    finally:
        os.close(host)  # closing drops the lock
        os.close(turnstile)
