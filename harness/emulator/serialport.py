"""The emulated board's UART0 as an ordinary serial port, for the user's own tools.

`SerialRelay` sits between QEMU's serial socket and everything that talks to the board:

- a pseudo-terminal of its own (`os.openpty()`), for mpremote, picocom, Thonny: the last
  64 KiB the board printed are replayed to a client that opens it, so nothing printed
  before it came is lost (QEMU's own `-serial pty` drops that);
- an RFC2217 endpoint on 127.0.0.1 (pyserial's `PortManager`), which carries DTR and
  RTS: they drive EN and GPIO0 through `ResetCircuit` as a USB board's auto-reset
  circuit does, so esptool's default reset sequences work unchanged;
- the harness's own console, over a socket pair: it gets the board's output whenever no
  client owns the port, and pauses (gets nothing) while one does.

One client at a time. Everything the board prints goes to the serial log, and what a
client sends is recorded there too (`>>` lines). QEMU's socket can be swapped while
the relay runs (a power cycle), so a client stays connected across resets.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import termios
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

from serial import rfc2217

from .console import SerialLog

REPLAY = 64 * 1024  # bytes of output kept for a pty client that opens the port later


class ResetCircuit:
    """DTR and RTS as the two-transistor auto-reset circuit of USB ESP32 boards.

    EN is low while RTS is asserted and DTR is not; GPIO0 is low while DTR is asserted
    and RTS is not. When EN is released the chip restarts, in download mode when GPIO0
    is low at that moment. With both lines asserted both transistors are off: on a board
    that state is a glitch of microseconds that the RC delay on EN swallows, but over
    RFC2217 each line change is a round trip, so (asserted, asserted) on the way out of
    reset is passed through, and only judged as a release if it lasts (`SETTLE`).
    """

    SETTLE = 0.5

    def __init__(self, restart: Callable[[bool], None]):
        self.restart = restart
        self.dtr = False
        self.rts = False
        self._held = False
        self._settle_at: float | None = None

    @property
    def en_low(self) -> bool:
        return self.rts and not self.dtr

    @property
    def gpio0_low(self) -> bool:
        return self.dtr and not self.rts

    def set(self, *, dtr: bool | None = None, rts: bool | None = None) -> None:
        if dtr is not None:
            self.dtr = dtr
        if rts is not None:
            self.rts = rts
        if self.en_low:
            self._held, self._settle_at = True, None
        elif self._held and self.dtr and self.rts:
            self._settle_at = time.monotonic() + self.SETTLE
        elif self._held:
            self._release()

    def _release(self) -> None:
        self._held, self._settle_at = False, None
        self.restart(self.gpio0_low)

    def idle(self) -> None:
        """A client left: the lines float back to released, which resets nothing."""
        self.dtr = self.rts = self._held = False
        self._settle_at = None

    def due(self) -> float | None:
        """Seconds until a lasting (asserted, asserted) counts as a release."""
        if self._settle_at is None:
            return None
        return max(0.0, self._settle_at - time.monotonic())

    def poll(self) -> None:
        if self._settle_at is not None and time.monotonic() >= self._settle_at:
            self._release()


class _Line:
    """A modem line the client sets (DTR, RTS): it lives in the reset circuit."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, port: RelayPort, owner: type | None = None) -> bool:
        return bool(getattr(port.circuit, self.name))

    def __set__(self, port: RelayPort, value: bool) -> None:
        port.circuit.set(**{self.name: value})


class RelayPort:
    """The serial port pyserial's RFC2217 PortManager drives: line settings are
    accepted as they are (QEMU's UART takes what the guest sets), DTR/RTS go to the
    reset circuit, a purge drops what the board printed and the client did not read."""

    dtr = _Line()
    rts = _Line()

    def __init__(self, circuit: ResetCircuit, purge: Callable[[], None]):
        self.circuit, self.purge = circuit, purge
        self.baudrate, self.bytesize, self.parity, self.stopbits = 115200, 8, "N", 1
        self.xonxoff = self.rtscts = self.break_condition = False
        self.cts = self.dsr = self.cd = True
        self.ri = False

    def reset_input_buffer(self) -> None:
        self.purge()

    def reset_output_buffer(self) -> None:
        pass


class SerialRelay:
    """Owns the board's UART0 bytes: QEMU on one side, the pty, RFC2217 and console on
    the other. Runs in a thread from `start()` until `close()`."""

    def __init__(
        self,
        log: SerialLog,
        restart: Callable[[bool], None],
        tick: Callable[[], None] = lambda: None,
    ):
        """`restart(download)`: EN was pulsed; `tick()`: called from the loop, often."""
        self.log = log
        self.tick = tick
        self.qemu: socket.socket | None = None
        self.console, self._console_peer = socket.socketpair()
        # The harness reads its console only while it waits for something (and not at all
        # while `harness boot --pty` serves): never block on it. Each small send costs the
        # socket far more than its bytes, so a few hundred boot lines filled it and a
        # blocking send stopped the relay for good (seen after esptool's hard reset).
        self.console.setblocking(False)
        self.master, slave = os.openpty()
        tty.setraw(slave)  # bytes as they are: no echo, no line editing, no CR/LF mapping
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.pty_path = os.ttyname(slave)
        os.close(slave)  # a hang-up on the master now means "no client"
        os.set_blocking(self.master, False)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.rfc2217_url = f"rfc2217://127.0.0.1:{self.listener.getsockname()[1]}"
        self.circuit = ResetCircuit(restart)
        self.owner: str | None = None  # "pty" | "rfc2217" | None (the harness's console)
        self.client: socket.socket | None = None
        self.manager: rfc2217.PortManager | None = None
        self.replay = bytearray()
        self.to_device = bytearray()  # held while QEMU restarts
        self.to_pty = bytearray()
        self.to_console = bytearray()  # the newest REPLAY bytes the console has not taken
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="serial-relay", daemon=True)

    @property
    def console_socket(self) -> socket.socket:
        """The harness's side of the console pair (read by harness.emulator.console)."""
        return self._console_peer

    def attach(self, qemu: socket.socket | None) -> None:
        """QEMU's serial socket (again, after a restart); None while it restarts."""
        with self._lock:
            self.qemu = qemu
            if qemu is not None and self.to_device:
                qemu.sendall(bytes(self.to_device))
                self.to_device.clear()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for sock in (self.client, self.listener, self.console, self._console_peer):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        with contextlib.suppress(OSError):
            os.close(self.master)

    # -- the loop ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._claim_pty()
            readable, writable = self._wait()
            for item in readable:
                self._read(item)
            if self.master in writable:
                self._flush_pty()
            if self.console in writable:
                self._flush_console()
            self.circuit.poll()
            self.tick()

    def _wait(self) -> tuple[list[Any], list[Any]]:
        """What can be read and written now (or within 50 ms, or before the circuit is due)."""
        watch: list[Any] = [self.console, self.listener]
        watch += [s for s in (self.qemu, self.client) if s is not None]
        pty = self.owner == "pty"
        pty_in: list[Any] = [self.master] if pty else []
        pty_out: list[Any] = [self.master] if pty and self.to_pty else []
        console_out: list[Any] = [self.console] if self.to_console else []
        due = self.circuit.due()
        wait = 0.05 if due is None else min(0.05, due)
        try:
            readable, writable, _ = select.select([*watch, *pty_in], [*pty_out, *console_out],
                                                  [], wait)  # fmt: skip
        except (OSError, ValueError):  # a socket closed under us: look again
            return [], []
        return readable, writable

    def _read(self, item: Any) -> None:
        if item is self.qemu:
            self._from_device()
        elif item is self.console:
            self._to_device(self._recv(self.console), record=False)
        elif item is self.listener:
            self._accept()
        elif item is self.client:
            self._from_rfc2217()
        elif item == self.master:
            self._from_pty()

    def _recv(self, sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    def _from_device(self) -> None:
        qemu = self.qemu
        data = self._recv(qemu) if qemu is not None else b""
        if not data:  # QEMU went away on its own (a restart detaches it first): tell the console
            with self._lock:
                if self.qemu is qemu:
                    self.qemu = None
            with contextlib.suppress(OSError):
                self.console.shutdown(socket.SHUT_WR)
            return
        self.log.write(data)
        if self.owner == "pty":
            self.to_pty += data
            self._flush_pty()
        elif self.owner == "rfc2217" and self.client is not None and self.manager is not None:
            with contextlib.suppress(OSError):
                self.client.sendall(b"".join(self.manager.escape(data)))
        else:
            self.replay += data
            del self.replay[:-REPLAY]
            self.to_console += data
            del self.to_console[:-REPLAY]  # older output is in the serial log
            self._flush_console()

    def _flush_console(self) -> None:
        try:
            sent = self.console.send(self.to_console)
        except BlockingIOError:
            return
        except OSError:  # the console is gone: nobody will read it
            self.to_console.clear()
            return
        del self.to_console[:sent]

    def _to_device(self, data: bytes, *, record: bool) -> None:
        if not data:
            return
        if record:
            self.log.record_input(data)
        with self._lock:
            if self.qemu is None:
                self.to_device += data
                return
            with contextlib.suppress(OSError):
                self.qemu.sendall(data)

    # -- the pty ----------------------------------------------------------------------
    def _claim_pty(self) -> None:
        """A client opened the pty when its master stops reporting a hang-up."""
        if self.owner is not None:
            return
        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        events = dict(poller.poll(0)).get(self.master, 0)
        if not events & select.POLLHUP:
            self.owner = "pty"
            self.log.note(f"client opened {self.pty_path}")
            self.to_pty += self.replay
            self.replay.clear()

    def _from_pty(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the last client closed it
            data = b""
        if not data:
            self._release()
            return
        self._to_device(data, record=True)

    def _flush_pty(self) -> None:
        try:
            sent = os.write(self.master, bytes(self.to_pty))
        except BlockingIOError:
            return
        except OSError:
            self._release()
            return
        del self.to_pty[:sent]

    # -- RFC2217 ----------------------------------------------------------------------
    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        if self.owner is not None:  # one client at a time
            conn.close()
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client, self.owner = conn, "rfc2217"
        self.log.note("RFC2217 client connected")
        port = RelayPort(self.circuit, self._purge)
        self.manager = rfc2217.PortManager(port, _Connection(conn))

    def _from_rfc2217(self) -> None:
        client, manager = self.client, self.manager
        data = self._recv(client) if client is not None else b""
        if not data or manager is None:
            self._release()
            return
        self._to_device(b"".join(manager.filter(data)), record=True)

    def _purge(self) -> None:
        self.replay.clear()

    def _release(self) -> None:
        """The client left: the harness's console reads the board again."""
        if self.client is not None:
            with contextlib.suppress(OSError):
                self.client.close()
        self.client, self.manager, self.owner = None, None, None
        self.to_pty.clear()
        self.circuit.idle()
        self.log.note("client left: the harness reads the port again")


class _Connection:
    """What PortManager writes its Telnet/RFC2217 replies to."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)
