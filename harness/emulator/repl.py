"""The MicroPython REPL over the console: friendly lines and raw-paste code.

Friendly REPL lines end with `\\r` (the device's line discipline), and echo back.
Anything longer than a line goes through raw-paste mode (Ctrl-A, then Ctrl-E `A`
Ctrl-A): the device grants a window of bytes and sends `\\x01` each time it has room
for another, so its few-hundred-byte stdin buffer never overflows. Plain raw mode has
no such flow control and drops bytes on big inputs.

The raw-paste reply is `stdout \\x04 stderr \\x04 >`; a non-empty stderr means the
code raised, and becomes a `DeviceError` carrying the device's traceback.
"""

from __future__ import annotations

import base64
import re
import struct
import time
from dataclasses import dataclass

from ..errors import DeviceError, HarnessError
from .console import RESET_BANNER, Console

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"
PROMPT = re.compile(rb">>> $|>>> (?=[^\r\n]*$)")
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
SOFT_REBOOT = b"MPY: soft reboot"
# Silence that still means "starting" after a reset: the app's start-up prints nothing for
# 1.3-1.4 s under this QEMU, and a byte then crashes v1.27.0/v1.28.0 (docs/known-behaviour.md)
BOOT_QUIET = 5.0


@dataclass(frozen=True)
class Ended:
    """How pasted code ended: it returned (stdout, stderr), or the device reset."""

    out: str = ""
    err: str = ""
    reset: str | None = None  # the ROM's reset reason (SW_CPU_RESET, ...) when it reset


class Repl:
    """Drive MicroPython's REPL on one console."""

    def __init__(self, console: Console):
        self.console = console
        self.raw = False
        self.known = True  # False: someone else had the port; wake the REPL before use

    def forget_state(self) -> None:
        """Another client had the port (or reset the board): the REPL's mode, and whether
        MicroPython is up at all, are unknown until the next use wakes it."""
        self.raw, self.known = False, False

    def _ready(self, timeout: float) -> None:
        if not self.known:
            self.wake(max(15.0, timeout))

    # -- friendly REPL -------------------------------------------------------------
    def wait_prompt(self, timeout: float = 30.0) -> None:
        """Wait for `>>> ` after power-on or reset (fails fast on crash or boot loop)."""
        self.console.expect(PROMPT, timeout, during="boot to the >>> prompt")
        self.raw, self.known = False, True

    def wake(self, timeout: float = 15.0, every: float = 1.0) -> None:
        """Get the prompt back from a board in an unknown state (a client just left it,
        or reset it): first let a board that is still starting finish, since what is typed
        during a start-up is lost, as on a real board, and a Ctrl-C that arrives before
        MicroPython is up can crash it (v1.27.0 and v1.28.0 panic with LoadProhibited);
        then Ctrl-C and Ctrl-B each `every` seconds until `>>> ` answers."""
        deadline = time.monotonic() + timeout
        if self._settle(deadline, every):
            return
        while time.monotonic() < deadline:
            self.console.send(CTRL_C + CTRL_B)  # stop a program; leave raw mode, or reprint
            wait = max(0.1, min(every, deadline - time.monotonic()))
            if self.console.poll(PROMPT, wait, during="waking the REPL"):
                self.raw, self.known = False, True
                return
        raise self.console.gave_up(PROMPT, timeout, "waking the REPL (Ctrl-C, Ctrl-B)")

    def _settle(self, deadline: float, quiet: float) -> bool:
        """Wait until the board prints its prompt (True) or says nothing for a while (False:
        it idles, at a prompt printed before or in a program, and may be typed to). A board
        that reset and has not printed MicroPython's banner since is still starting: it
        stays silent for over a second while the app initialises, so it gets BOOT_QUIET."""
        while time.monotonic() < deadline:
            before = self.console.log.received
            starting = bool(self.console.log.resets_since_up)
            wait = min(BOOT_QUIET if starting else quiet, max(0.0, deadline - time.monotonic()))
            if self.console.poll(PROMPT, wait, during="waiting for the board to start"):
                self.raw, self.known = False, True
                return True
            if self.console.log.received == before:
                return False
        return False

    def line(self, code: str, timeout: float = 10.0) -> str:
        """Type one line at the friendly prompt; return what it printed."""
        if "\n" in code or "\r" in code:
            raise HarnessError("Repl.line takes one line; use Repl.exec for multi-line code")
        self._ready(timeout)
        self._leave_raw()
        self.console.send(code.encode() + b"\r")
        self.console.expect(
            re.escape(code.encode()) + rb"\r\n", timeout, during=f"echo of {code!r}", resets=False
        )
        self.console.expect(PROMPT, timeout, during=f"running {code!r}", resets=False)
        return _text(self.console.before).rstrip("\n")

    def soft_reset(self, timeout: float = 30.0) -> None:
        """Ctrl-D at the friendly prompt: MicroPython restarts, hardware does not."""
        self._ready(timeout)
        self._leave_raw()
        self.console.send(CTRL_D)
        self.console.expect(SOFT_REBOOT, timeout, during="soft reset")
        self.wait_prompt(timeout)

    def put(self, path: str, data: bytes, chunk: int = 3072) -> None:
        """Write a file on the device's filesystem (parent folders made), like `mpremote cp`."""
        parts = path.strip("/").split("/")
        code = ["import os, binascii"]
        for i in range(1, len(parts)):
            folder = "/" + "/".join(parts[:i])
            code.append(f"try:\n    os.mkdir({folder!r})\nexcept OSError:\n    pass")
        code.append(f"_f = open({'/' + '/'.join(parts)!r}, 'wb')")
        self.exec("\n".join(code))
        for off in range(0, len(data), chunk):
            piece = base64.b64encode(data[off : off + chunk]).decode()
            self.exec(f"_f.write(binascii.a2b_base64({piece!r}))")
        self.exec("_f.close()\ndel _f")

    # -- raw-paste -----------------------------------------------------------------
    def exec(self, code: str | bytes, timeout: float = 30.0) -> str:
        """Run `code` in raw-paste mode; return its stdout, or raise DeviceError."""
        out, err = self.exec_raw(code, timeout)
        if err:
            raise DeviceError(err, out)
        return out

    def exec_raw(self, code: str | bytes, timeout: float = 30.0) -> tuple[str, str]:
        """Run `code`; return (stdout, stderr) as the device printed them."""
        self.exec_start(code, timeout)
        return self.exec_finish(timeout)

    def exec_start(self, code: str | bytes, timeout: float = 30.0) -> None:
        """Paste `code` and let it run; `exec_finish` collects its output later."""
        self._ready(timeout)
        self._enter_raw(timeout)
        self._paste(code.encode() if isinstance(code, str) else code, timeout)

    def exec_finish(self, timeout: float = 30.0) -> tuple[str, str]:
        """Wait for the pasted code to end; return (stdout, stderr)."""
        con = self.console
        con.expect(CTRL_D, timeout, during="raw-paste execution (stdout)", resets=False)
        out = con.before
        con.expect(CTRL_D, timeout, during="raw-paste execution (stderr)", resets=False)
        err = con.before
        con.expect(b">", timeout, during="raw-paste execution (prompt)", resets=False)
        return _text(out), _text(err)

    def exec_finish_or_reset(self, timeout: float, during: str) -> Ended:
        """Wait for pasted code that may reset the device (an OTA library's reboot): its
        output when it returns, or the ROM's reset reason when the device resets."""
        end = self.console.expect([RESET_BANNER, rb"\x04([^\x04]*)\x04>"], timeout,
                                  during=during, fail_fast=False)  # fmt: skip
        if end.re is RESET_BANNER:
            self.raw = False
            return Ended(reset=end.group(2).decode())
        return Ended(_text(self.console.before), _text(end.group(1)))

    def _enter_raw(self, timeout: float) -> None:
        # the caller's timeout, not a short fixed one: a loaded host can hold the
        # answer back for seconds, and a wrong "timed out" costs a whole cell
        if self.raw:
            return
        self.console.send(b"\r" + CTRL_C + CTRL_C)
        time.sleep(0.02)  # let a running program die before the mode switch
        self.console.send(CTRL_A)
        self.console.expect(RAW_BANNER, timeout, during="entering raw REPL", resets=False)
        self.raw = True

    def _leave_raw(self) -> None:
        if self.raw:
            self.console.send(CTRL_B)
            self.console.expect(PROMPT, 5, during="leaving raw REPL", resets=False)
            self.raw = False

    def _paste(self, data: bytes, timeout: float) -> None:
        con = self.console
        con.send(CTRL_E + b"A" + CTRL_A)
        reply = con.expect(rb"R[\x00\x01]", timeout, during="raw-paste handshake", resets=False)
        if reply.group(0) != b"R\x01":
            raise HarnessError("this firmware refused raw-paste mode (MicroPython < 1.14?)")
        window = struct.unpack("<H", con.read_exact(2, timeout, "raw-paste flow control"))[0]
        credit, sent = window, 0
        while sent < len(data):
            while credit == 0 or con.has_pending("raw-paste"):
                flag = con.read_exact(1, timeout, "raw-paste flow control")
                if flag == CTRL_A:
                    credit += window
                elif flag == CTRL_D:  # the device ended the paste early (e.g. syntax error)
                    con.send(CTRL_D)
                    return
                else:
                    raise HarnessError(f"unexpected byte {flag!r} from the device during raw-paste")
            chunk = data[sent : sent + credit]
            con.send(chunk)
            sent += len(chunk)
            credit -= len(chunk)
        con.send(CTRL_D)
        con.expect(CTRL_D, timeout, during="raw-paste end of data", resets=False)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").replace("\r\n", "\n")
