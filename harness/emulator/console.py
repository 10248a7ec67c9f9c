"""The console: the emulated UART0 through pexpect, a timestamped serial log, fail-fast checks.

This is the only module that touches pexpect. Everything the guest prints goes
through `SerialLog`, which writes it to the run's `serial.log` with the time since
power-on and keeps every line (colour codes removed) for steps and error messages.
`Console.expect` waits for a pattern but stops at once, with a diagnosis, when the
guest crashes (Guru Meditation, abort()), sits in a boot loop (the ROM's `rst:` banner
repeating without MicroPython starting), resets when nothing asked it to, or prints a
line a scenario forbade (`forbid`), instead of waiting out its timeout. A wait that does
run out asks QEMU whether the guest is stuck (harness.emulator.stall) before it raises:
`GuestStalled` when it is, `DeviceTimeout` when the guest ran and never said it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pexpect
from pexpect import fdpexpect

from ..chips import Chip
from ..errors import (
    BootLoop,
    DeviceTimeout,
    FirmwareCrash,
    GuestStalled,
    QemuExited,
    UnexpectedOutput,
    UnexpectedReset,
)
from .stall import Diagnosis

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RESET_BANNER = re.compile(rb"rst:(0x[0-9a-f]+) \((\w+)\)")
CRASHES = [
    re.compile(rb"Guru Meditation Error[^\r\n]*\r?\n"),
    re.compile(rb"abort\(\) was called[^\r\n]*\r?\n"),
]
MICROPYTHON_UP = re.compile(rb"MicroPython v\d|>>> ")
BOOT_LOOP_RESETS = 3  # ROM banners in a row without MicroPython starting
# A wait that has heard nothing for this long asks QEMU whether the guest is stuck, and
# fails at once if it is, instead of waiting out the rest of its timeout (a stalled old
# build would otherwise cost every wait's full 30-60 s, and each retry as much again).
STALL_LOOK_AFTER = 8.0
# ESP-IDF log lines from the bootloader and the app: `E (123) tag: message`
LOG_LINE = re.compile(r"^([EW]) \((\d+)\) ([\w.]+): (.*)$")

Pattern = str | bytes | re.Pattern[bytes]
ExitCheck = Callable[[str, float], None]
Probe = Callable[[], Diagnosis]  # harness.emulator.stall.diagnose on this console's board


@dataclass(frozen=True)
class Watch:
    """What the console asks of the board behind it when the serial port says nothing."""

    alive: ExitCheck  # raises QemuExited (with QEMU's last words) when QEMU is gone
    stuck: Probe  # is the guest stuck? (harness.emulator.stall)


def strip_ansi(text: str) -> str:
    """Serial text without the colour codes ESP-IDF puts around log lines."""
    return ANSI.sub("", text)


def _compile(pattern: Pattern) -> re.Pattern[bytes]:
    if isinstance(pattern, re.Pattern):
        return pattern
    return re.compile(pattern.encode() if isinstance(pattern, str) else pattern)


def _compiled(patterns: Pattern | Sequence[Pattern]) -> list[re.Pattern[bytes]]:
    if isinstance(patterns, str | bytes | re.Pattern):
        return [_compile(patterns)]
    return [_compile(p) for p in patterns]


@dataclass(frozen=True)
class Forbidden:
    """A line that must not appear (a scenario's `not_expect`), as the user wrote it."""

    text: str
    pattern: re.Pattern[str]


class SerialLog:
    """pexpect's `logfile_read`: a timestamped, line-oriented serial log.

    It counts ROM reset banners since MicroPython last came up (how a boot loop is told
    apart from a slow boot) and checks each complete line against forbidden patterns.
    """

    def __init__(self, path: Path, keep: int = 40):
        self.path = path
        self._file = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._start = time.monotonic()
        self._partial = b""
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)
        self.lines: list[str] = []  # every line, colour codes removed
        self.resets_since_up: list[str] = []
        self.forbidden: list[Forbidden] = []
        self.violation: tuple[Forbidden, str] | None = None
        self.received = 0  # bytes the board printed so far (is it still talking?)

    @property
    def started(self) -> float:
        """When the log's clock reads 0 (time.monotonic()): its lines' stamps count from it."""
        return self._start

    def write(self, data: bytes) -> None:
        self.received += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line.rstrip(b"\r"))
        if MICROPYTHON_UP.search(self._partial):
            self.resets_since_up.clear()
        self._file.flush()  # a SIGKILLed harness still leaves the evidence

    def _stamp(self, mark: str = "") -> bytes:
        """`[  seconds] `, then `>> ` for what a client sent, `-- ` for the harness's notes."""
        return f"[{time.monotonic() - self._start:9.3f}] {mark}".encode()

    def _line(self, line: bytes) -> None:
        self._file.write(self._stamp() + line + b"\n")
        text = strip_ansi(line.decode("utf-8", "replace"))
        self.tail.append(text)
        self.lines.append(text)
        self._check(text)
        banner = RESET_BANNER.search(line)
        if banner:
            self.resets_since_up.append(banner.group(2).decode())
        elif MICROPYTHON_UP.search(line):
            self.resets_since_up.clear()

    def _check(self, text: str) -> None:
        if self.violation is None:
            for rule in self.forbidden:
                if rule.pattern.search(text):
                    self.violation = (rule, text)
                    return

    def forbid(self, rule: Forbidden, since: int) -> None:
        """From now on (and in the lines from `since`), `rule` must not match a line."""
        self.forbidden.append(rule)
        for text in self.lines[since:]:
            self._check(text)

    def record_input(self, data: bytes) -> None:
        """What a client sent the board, as `>>` lines (the log keeps both directions)."""
        self._file.write(self._stamp(">> ") + repr(data).encode() + b"\n")
        self._file.flush()

    def note(self, text: str) -> None:
        """A line of the harness's own (`--`), not the board's."""
        self._file.write(self._stamp("-- ") + f"{text}\n".encode())
        self._file.flush()  # the note that explains a hang must survive a kill

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
            lines.append(strip_ansi(self._partial.decode("utf-8", "replace")))
        return "\n".join(f"    | {line}" for line in lines)


def log_lines(lines: list[str]) -> list[str]:
    """The ESP-IDF `E`/`W` log lines among `lines`, as `E (27830) esp_image: ...`."""
    return [line.strip() for line in lines if LOG_LINE.match(line.strip())]


class _Quiet:
    """How long the board has said nothing during one wait: when a stall look is due."""

    def __init__(self, log: SerialLog) -> None:
        self.log, self.heard, self.since = log, log.received, time.monotonic()

    def due(self) -> bool:
        """True once per STALL_LOOK_AFTER seconds of silence."""
        now = time.monotonic()
        if self.log.received != self.heard:
            self.heard, self.since = self.log.received, now
        elif now - self.since >= STALL_LOOK_AFTER:
            self.since = now
            return True
        return False


class Console:
    """Read and write the guest's UART0 through pexpect (bytes mode)."""

    SLICE = 0.25  # longest wait between fail-fast checks

    def __init__(
        self,
        sock: socket.socket,
        log: SerialLog,
        watch: Watch,
        *,
        feed_log: bool,
        chip: Chip,
    ) -> None:
        """`feed_log`: this console writes what it reads into `log`; False when something
        else does (a relay, which also sees the bytes a client of the port gets). `chip`:
        whose ROM words the reset banners are (harness.chips)."""
        self.chip = chip
        self.sock = sock
        self.log = log
        self.exit_check = watch.alive
        self.probe = watch.stuck  # asked by every wait that runs out
        self._child = fdpexpect.fdspawn(sock.fileno(), timeout=30, maxread=65536)
        if feed_log:
            self._child.logfile_read = self.log
        self.boot_loop_resets = BOOT_LOOP_RESETS

    # -- what was read ----------------------------------------------------------------
    @property
    def before(self) -> bytes:
        """What arrived before the last match."""
        return bytes(self._child.before or b"")

    def mark(self) -> int:
        """A position in the serial lines, for `lines_since`."""
        return len(self.log.lines)

    def lines_since(self, mark: int) -> list[str]:
        return self.log.lines[mark:]

    def forbid(self, rule: Forbidden, since: int) -> None:
        self.log.forbid(rule, since)
        self.check("not_expect")

    # -- writing ----------------------------------------------------------------------
    def send(self, data: bytes | str, during: str = "sending to the device") -> None:
        try:
            self._child.send(data.encode() if isinstance(data, str) else data)
        except OSError:  # the peer is gone: say why, not "broken pipe"
            self.exit_check(during, 2.0)
            raise QemuExited(f"QEMU closed the serial port during {during}") from None

    # -- waiting ----------------------------------------------------------------------
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

        Raises DeviceTimeout or GuestStalled (with QEMU's view of the CPUs, the last serial
        lines and the log path), FirmwareCrash, BootLoop, UnexpectedOutput or QemuExited
        instead of returning. With `resets` (booting) a ROM reset banner only counts
        towards a boot loop; without (the REPL at work) it stops the wait at once as
        UnexpectedReset.
        """
        wanted = _compiled(patterns)
        found = self._wait(wanted, timeout, during, fail_fast=fail_fast, resets=resets)
        if found is None:
            raise self.gave_up(wanted, timeout, during)
        return found

    def poll(self, patterns: Pattern | Sequence[Pattern], wait: float, during: str) -> bool:
        """Did one of `patterns` come within `wait` s? A short look whose "no" is an answer
        (is the board quiet? up yet?), not a failure, so it asks QEMU nothing; a caller whose
        looks all fail raises `timed_out(...)` itself. Fails fast as `expect` does."""
        return (
            self._wait(_compiled(patterns), wait, during, fail_fast=True, resets=True) is not None
        )

    def _wait(
        self, wanted: list[re.Pattern[bytes]], timeout: float, during: str, *,
        fail_fast: bool, resets: bool,
    ) -> re.Match[bytes] | None:  # fmt: skip
        """`expect`'s loop: the match, or None when `timeout` ran out."""
        watch = [*CRASHES, RESET_BANNER] if fail_fast else []
        deadline = time.monotonic() + timeout
        quiet = _Quiet(self.log)
        while True:
            self.check(during)
            if quiet.due():
                self._look_for_a_stall(timeout, during)
            remaining = deadline - time.monotonic()
            try:
                index = self._child.expect(
                    [*wanted, *watch, pexpect.EOF], timeout=max(0.0, min(remaining, self.SLICE))
                )
            except pexpect.TIMEOUT:
                self.exit_check(during, 0.0)
                if remaining > self.SLICE:
                    continue
                self.check(during)
                return None
            except OSError:  # the socket died under pexpect
                index = len(wanted) + len(watch)
            if index < len(wanted):
                self.check(during)
                found: re.Match[bytes] = self._child.match
                return found
            if index == len(wanted) + len(watch):  # EOF: QEMU closed the serial socket
                self.exit_check(during, 2.0)
                raise QemuExited(f"QEMU closed the serial port during {during}")
            found = self._child.match
            if found.re is RESET_BANNER:
                if not resets:
                    self._raise_reset(found.group(2).decode(), during)
                self._check_boot_loop(during)
                continue
            self._raise_crash(found.group(0).decode("utf-8", "replace"), during)

    def pump(self, wait: float, during: str) -> None:
        """Read what arrives within `wait` s into the log only (for line-based checks)."""
        try:
            self._child.read_nonblocking(65536, timeout=wait)
        except pexpect.TIMEOUT:
            pass
        except (pexpect.EOF, OSError):
            self.exit_check(during, 2.0)
            raise QemuExited(f"QEMU closed the serial port during {during}") from None
        self.check(during)

    def read_available(self, wait: float = 0.0) -> bytes:
        """Whatever is buffered or arrives within `wait` seconds (interactive mode)."""
        pending, self._child.buffer = bytes(self._child.buffer), b""
        if pending:
            return pending
        try:
            return bytes(self._child.read_nonblocking(65536, timeout=wait))
        except pexpect.TIMEOUT:
            return b""
        except (pexpect.EOF, OSError):
            self.exit_check("reading the serial port", 2.0)
            raise QemuExited("QEMU closed the serial port") from None

    def drain(self) -> None:
        """Drop what arrived and was never read (a client had the port meanwhile): the
        serial log keeps it; waits from here on see only what comes next."""
        while self.read_available(0.05):
            pass
        self.log.resets_since_up.clear()

    def read_exact(self, n: int, timeout: float, during: str) -> bytes:
        """Exactly `n` bytes (a binary protocol on the UART: raw-paste flow control)."""
        child = self._child
        deadline = time.monotonic() + timeout
        while len(child.buffer) < n:
            if time.monotonic() > deadline:
                raise self.timed_out(DeviceTimeout(
                    f"timed out after {timeout:g}s in {during}\n"
                    f"{self.log.last_lines()}\n    serial log: {self.log.path}"
                ))  # fmt: skip
            try:
                child.buffer += child.read_nonblocking(n - len(child.buffer), timeout=0.5)
            except pexpect.TIMEOUT:
                self.exit_check(during, 0.0)
            except (pexpect.EOF, OSError):
                self.exit_check(during, 2.0)
                raise QemuExited(f"QEMU closed the serial port during {during}") from None
        head, child.buffer = child.buffer[:n], child.buffer[n:]
        return bytes(head)

    def has_pending(self, during: str) -> bool:
        """True when a byte is already waiting (without blocking)."""
        child = self._child
        if child.buffer:
            return True
        try:
            child.buffer = child.read_nonblocking(1, timeout=0)
        except pexpect.TIMEOUT:
            return False
        except (pexpect.EOF, OSError):
            self.exit_check(during, 2.0)
            raise QemuExited(f"QEMU closed the serial port during {during}") from None
        return bool(child.buffer)

    # -- diagnoses --------------------------------------------------------------------
    def _look_for_a_stall(self, timeout: float, during: str) -> None:
        """Raise GuestStalled now if QEMU shows the guest stuck (a long, silent wait)."""
        found = self.probe()
        if found.stalled:
            self.log.note(f"silent for {STALL_LOOK_AFTER:g}s: {found.words}")
            raise GuestStalled(
                f"the guest stopped during {during} (silent for {STALL_LOOK_AFTER:g}s of a "
                f"{timeout:.3g}s wait); {found.words}\n  last serial lines:\n"
                f"{self.log.last_lines()}\n    serial log: {self.log.path}"
            )

    def gave_up(
        self, patterns: Pattern | Sequence[Pattern], timeout: float, during: str
    ) -> DeviceTimeout:
        """The error for a wait for `patterns` that ran out after `timeout` s, diagnosed."""
        message = self._timeout_message(_compiled(patterns), timeout, during)
        return self.timed_out(DeviceTimeout(message))

    def timed_out(self, error: DeviceTimeout) -> DeviceTimeout:
        """A wait that ran out, named by what QEMU says of the guest: `GuestStalled` when
        it is stuck (harness.emulator.stall), else `error`, with the CPUs in its words."""
        if isinstance(error, GuestStalled):
            return error
        found = self.probe()
        first, _, rest = str(error).partition("\n")
        words = f"{first}; {found.words}" + (f"\n{rest}" if rest else "")
        self.log.note(f"wait ran out: {found.words}")
        if found.stalled:
            return GuestStalled(words)
        return DeviceTimeout(words)

    def check(self, during: str) -> None:
        """Raise UnexpectedOutput if a forbidden line has been seen."""
        if self.log.violation is None:
            return
        rule, line = self.log.violation
        raise UnexpectedOutput(
            f"serial output showed {rule.text!r} (not_expect) during {during}: {line!r}\n"
            f"{self.log.last_lines()}\n    serial log: {self.log.path}",
            rule=rule.text, line=line,
        )  # fmt: skip

    def _check_boot_loop(self, during: str) -> None:
        reasons = self.log.resets_since_up
        if len(reasons) < self.boot_loop_resets:
            return
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        host = f"host load average {load} on {os.cpu_count()} cores"
        hint = ""
        loaded = (any(self.chip.is_watchdog(r) for r in reasons)
                  and os.getloadavg()[0] >= (os.cpu_count() or 1))  # fmt: skip
        if loaded:
            hint = " (watchdog resets under host load: likely the host, not the firmware)"
        raise BootLoop.of(
            f"boot loop during {during}: {len(reasons)} resets without MicroPython starting "
            f"({', '.join(reasons)}); {host}{hint}; serial log {self.log.path}",
            list(reasons), self.chip,
        )  # fmt: skip

    def _raise_reset(self, reason: str, during: str) -> None:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        hint = (
            f" (a watchdog: under emulation the host may have starved QEMU; host load "
            f"average {load} on {os.cpu_count()} cores)"
            if self.chip.is_watchdog(reason)
            else ""
        )
        raise UnexpectedReset.of(
            f"the device reset ({reason}) during {during}{hint}; serial log {self.log.path}",
            reason, self.chip,
        )  # fmt: skip

    def _raise_crash(self, line: str, during: str) -> None:
        with contextlib.suppress(OSError):  # let the backtrace reach the log first
            self._child.expect([pexpect.TIMEOUT, pexpect.EOF], timeout=0.5)
        raise FirmwareCrash(
            f"firmware crashed during {during}: {line.strip()}\n"
            f"{self.log.last_lines()}\n    serial log: {self.log.path}"
        )

    def _timeout_message(self, wanted: list[re.Pattern[bytes]], timeout: float, during: str) -> str:
        what = " or ".join(repr(p.pattern.decode("utf-8", "replace")) for p in wanted)
        return (
            f"timed out after {timeout:.3g}s during {during} waiting for {what}\n"
            f"  last serial lines:\n{self.log.last_lines()}\n    serial log: {self.log.path}"
        )

    def close(self) -> None:
        """The log is the board's: it outlives a console (a power cycle makes a new one)."""
