"""The console: pexpect on the emulated UART, a timestamped serial log, fail-fast checks.

Everything the guest prints goes through `SerialLog`, which writes it to the run's
`serial.log` with the time since power-on and keeps the last lines for error
messages. `Console.expect` waits for a pattern but stops at once, with a diagnosis,
when the guest crashes (Guru Meditation, abort()) or sits in a boot loop (the ROM's
`rst:` banner repeating without MicroPython ever starting), instead of waiting out
its timeout.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pexpect
from pexpect import fdpexpect

from .errors import (
    BootLoop,
    DeviceTimeout,
    FirmwareCrash,
    QemuExited,
    UnexpectedOutput,
    UnexpectedReset,
)

RESET_BANNER = re.compile(rb"rst:(0x[0-9a-f]+) \((\w+)\)")
CRASHES = [
    re.compile(rb"Guru Meditation Error[^\r\n]*\r?\n"),
    re.compile(rb"abort\(\) was called[^\r\n]*\r?\n"),
]
MICROPYTHON_UP = re.compile(rb"MicroPython v\d|>>> ")
BOOT_LOOP_RESETS = 3  # ROM banners in a row without MicroPython starting

Pattern = str | bytes | re.Pattern[bytes]


def _compile(pattern: Pattern) -> re.Pattern[bytes]:
    if isinstance(pattern, re.Pattern):
        return pattern
    return re.compile(pattern.encode() if isinstance(pattern, str) else pattern)


class SerialLog:
    """pexpect's `logfile_read`: a timestamped, line-oriented serial log.

    It also counts ROM reset banners since MicroPython last came up, which is how a
    boot loop is told apart from a slow boot.
    """

    def __init__(self, path: Path, keep: int = 40):
        self.path = path
        self._file = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._start = time.monotonic()
        self._partial = b""
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)
        self.lines: list[str] = []  # every line, so a step can look at what it caused
        self.resets_since_up: list[str] = []

    def write(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line.rstrip(b"\r"))
        if MICROPYTHON_UP.search(self._partial):
            self.resets_since_up.clear()

    def _line(self, line: bytes) -> None:
        stamp = f"[{time.monotonic() - self._start:9.3f}] ".encode()
        self._file.write(stamp + line + b"\n")
        text = line.decode("utf-8", "replace")
        self.tail.append(text)
        self.lines.append(text)
        banner = RESET_BANNER.search(line)
        if banner:
            self.resets_since_up.append(banner.group(2).decode())
        elif MICROPYTHON_UP.search(line):
            self.resets_since_up.clear()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        self._file.close()

    def last_lines(self, n: int = 12) -> str:
        lines = list(self.tail)[-n:]
        if self._partial:
            lines.append(self._partial.decode("utf-8", "replace"))
        return "\n".join(f"    | {line}" for line in lines)


class Console:
    """Read and write the guest's UART0 through pexpect (bytes mode)."""

    def __init__(
        self,
        sock: socket.socket,
        log_path: Path,
        exit_check: Callable[..., None] = lambda during, wait=0.0: None,
    ):
        self.sock = sock
        self.log = SerialLog(log_path)
        self.exit_check = exit_check  # raises QemuExited when QEMU is gone
        self.child = fdpexpect.fdspawn(sock.fileno(), timeout=30, maxread=65536)
        self.child.logfile_read = self.log
        self.boot_loop_resets = BOOT_LOOP_RESETS
        self.forbidden: list[re.Pattern[bytes]] = []  # a scenario's not_expect patterns

    def send(self, data: bytes | str, during: str = "sending to the device") -> None:
        try:
            self.child.send(data.encode() if isinstance(data, str) else data)
        except OSError:  # the peer is gone: say why, not "broken pipe"
            self.exit_check(during, wait=2.0)
            raise QemuExited(f"QEMU closed the serial port during {during}") from None

    def expect(
        self,
        patterns: Pattern | Sequence[Pattern],
        timeout: float = 30.0,
        *,
        during: str = "expect",
        fail_fast: bool = True,
        resets: bool = True,
    ) -> re.Match[bytes]:
        """Wait for the first of `patterns`; return its match (`.re` says which).

        Raises DeviceTimeout (with the last serial lines and the log path),
        FirmwareCrash, BootLoop or QemuExited instead of returning. With `resets`
        (booting) a ROM reset banner only counts towards a boot loop; without (the REPL
        at work) it stops the wait at once as UnexpectedReset.
        """
        wanted = [
            _compile(p)
            for p in ([patterns] if isinstance(patterns, str | bytes | re.Pattern) else patterns)
        ]
        watch = [*self.forbidden, *([*CRASHES, RESET_BANNER] if fail_fast else [])]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                index = self.child.expect(
                    [*wanted, *watch, pexpect.EOF], timeout=max(0.0, remaining)
                )
            except pexpect.TIMEOUT:
                self.exit_check(during)
                raise DeviceTimeout(self._timeout_message(wanted, timeout, during)) from None
            except OSError:  # the socket died under pexpect
                index = len(wanted) + len(watch)
            if index < len(wanted):
                return self.child.match
            if index == len(wanted) + len(watch):  # EOF: QEMU closed the serial socket
                self.exit_check(during, wait=2.0)
                raise QemuExited(f"QEMU closed the serial port during {during}")
            found = self.child.match
            if found.re in self.forbidden:
                self._raise_forbidden(found.re, during)
            if found.re is RESET_BANNER:
                if not resets:
                    self._raise_reset(found.group(2).decode(), during)
                self._check_boot_loop(during)
                continue
            self._raise_crash(found.group(0).decode("utf-8", "replace"), during)

    def _check_boot_loop(self, during: str) -> None:
        reasons = self.log.resets_since_up
        if len(reasons) < self.boot_loop_resets:
            return
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        host = f"host load average {load} on {os.cpu_count()} cores"
        hint = ""
        loaded = any("WDT" in r for r in reasons) and os.getloadavg()[0] >= (os.cpu_count() or 1)
        if loaded:
            hint = " (watchdog resets under host load: likely the host, not the firmware)"
        raise BootLoop(
            f"boot loop during {during}: {len(reasons)} resets without MicroPython starting "
            f"({', '.join(reasons)}); {host}{hint}; serial log {self.log.path}",
            list(reasons),
            loaded,
        )

    def _raise_reset(self, reason: str, during: str) -> None:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        watchdog = "WDT" in reason
        hint = (
            f" (a watchdog: under emulation the host may have starved QEMU; host load "
            f"average {load} on {os.cpu_count()} cores)"
            if watchdog
            else ""
        )
        raise UnexpectedReset(
            f"the device reset ({reason}) during {during}{hint}; serial log {self.log.path}",
            reason,
        )

    def _raise_forbidden(self, pattern: re.Pattern[bytes], during: str) -> None:
        with contextlib.suppress(OSError, pexpect.TIMEOUT, pexpect.EOF):
            self.child.expect(b"\n", timeout=0.5)  # the rest of the line, for the log
        raise UnexpectedOutput(
            f"serial output showed {pattern.pattern.decode('utf-8', 'replace')!r} "
            f"(not_expect) during {during}:\n{self.log.last_lines()}\n"
            f"    serial log: {self.log.path}"
        )

    def pump(self, wait: float, during: str) -> None:
        """Read what arrives within `wait` s into the log only (for line-based checks)."""
        try:
            self.child.read_nonblocking(65536, timeout=wait)
        except pexpect.TIMEOUT:
            return
        except (pexpect.EOF, OSError):
            self.exit_check(during, wait=2.0)
            raise QemuExited(f"QEMU closed the serial port during {during}") from None

    def _raise_crash(self, line: str, during: str) -> None:
        with contextlib.suppress(OSError):  # let the backtrace reach the log first
            self.child.expect([pexpect.TIMEOUT, pexpect.EOF], timeout=0.5)
        raise FirmwareCrash(
            f"firmware crashed during {during}: {line.strip()}\n"
            f"{self.log.last_lines()}\n    serial log: {self.log.path}"
        )

    def _timeout_message(self, wanted: list[re.Pattern[bytes]], timeout: float, during: str) -> str:
        what = " or ".join(repr(p.pattern.decode("utf-8", "replace")) for p in wanted)
        return (
            f"timed out after {timeout:g}s during {during} waiting for {what}; last serial lines:\n"
            f"{self.log.last_lines()}\n    serial log: {self.log.path}"
        )

    def read_available(self, wait: float = 0.0) -> bytes:
        """Whatever the guest printed within `wait` seconds (used by the interactive mode)."""
        try:
            return self.child.read_nonblocking(65536, timeout=wait)
        except pexpect.TIMEOUT:
            return b""

    def close(self) -> None:
        self.log.close()
