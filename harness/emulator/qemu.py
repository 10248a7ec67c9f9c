"""The machine: find Espressif's QEMU for a chip, run it on a flash file, reap it.

One `Machine` is one QEMU process. Serial and QMP are Unix sockets in the run's own
directory that the harness listens on and QEMU connects to, so runs never share a
port and can go in parallel. QEMU starts paused (`-S`); `start()` attaches the
serial reader before `cont`, so not one bootloader line is lost.

QEMU never outlives the harness: it runs in its own process group, gets SIGKILL
from the kernel when its parent dies (PR_SET_PDEATHSIG, which works even when the
parent is SIGKILLed), and every `Machine` still alive at exit is killed. Which binary,
machine and `-global` drivers a chip takes is its profile's (harness.chips).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import glob
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from .. import chips
from ..chips import Chip
from ..errors import (
    FlashTraceUnavailable,
    HarnessError,
    ImageError,
    QemuCrashed,
    QemuExited,
    QemuNotFound,
)
from ..paths import idf_tools_dir
from . import flashtrace, janitor

_PR_SET_PDEATHSIG = 1
_live: set[Machine] = set()


def _profile(chip: Chip) -> chips.Qemu:
    """The chip's QEMU, or the one line that says why the harness cannot boot it."""
    if chip.qemu is None or not chip.boots:
        raise ImageError(f"cannot boot {chip.name}: {chip.why_not()}")
    return chip.qemu


def install_hint(chip: Chip = chips.DEFAULT) -> str:
    qemu = _profile(chip)
    return (f"install Espressif's QEMU with `harness qemu install` (or ESP-IDF's "
            f"`idf_tools.py install {qemu.tool}`), or point --qemu / ESP_QEMU at "
            f"{qemu.binary}")  # fmt: skip


def _candidates(qemu: chips.Qemu) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    if os.environ.get("ESP_QEMU"):
        found.append(("ESP_QEMU", Path(os.environ["ESP_QEMU"])))
    pattern = str(idf_tools_dir() / qemu.tool / "*" / "qemu" / "bin" / qemu.binary)
    for path in sorted(glob.glob(pattern), reverse=True):  # newest version first
        found.append(("ESP-IDF tools folder", Path(path)))
    on_path = shutil.which(qemu.binary)
    if on_path:
        found.append(("PATH", Path(on_path)))
    return found


@functools.cache
def has_machine(qemu: Path, machine: str) -> bool:
    """Upstream and distribution builds of QEMU lack Espressif's machines (`esp32`)."""
    try:
        out = subprocess.run(
            [str(qemu), "-machine", "help"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.split()[:1] == [machine] for line in out.splitlines())


@functools.cache
def has_device(qemu: Path, device: str) -> bool:
    """The QEMU build has the device model `device` (`-device NAME,help` lists its
    options; a build without it says `Device 'NAME' not found`)."""
    try:
        out = subprocess.run([str(qemu), "-device", f"{device},help"], capture_output=True,
                             text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return f"{device} options" in out.stdout + out.stderr


def wifi_hint(wifi: chips.Wifi) -> str:
    return (f"build esp32-open-mac's QEMU (esp-develop at {wifi.commit}, docs/network.md) "
            f"into {idf_tools_dir() / wifi.tool}/, or point {wifi.env} at a "
            f"qemu-system-xtensa with the {wifi.device} model")  # fmt: skip


def find_wifi_qemu(explicit: str | os.PathLike[str] | None = None,
                   chip: Chip = chips.DEFAULT) -> Path:  # fmt: skip
    """The QEMU that emulates the chip's Wi-Fi (its profile's `wifi`), probed for the
    model: the variable that names it (HARNESS_QEMU_WIFI), `explicit` (--qemu) when that
    build has the model, then ~/.espressif/tools/qemu-xtensa-wifi/*/qemu/bin. Espressif's
    release stays the QEMU of every cell without a network."""
    qemu = _profile(chip)
    wifi = qemu.wifi
    if wifi is None:
        raise QemuNotFound(f"no QEMU emulates the Wi-Fi of {chip.name}")
    found: list[tuple[str, Path]] = []
    if os.environ.get(wifi.env):
        found.append((wifi.env, Path(os.environ[wifi.env])))
    if explicit is not None:
        found.append(("--qemu", Path(explicit)))
    pattern = str(idf_tools_dir() / wifi.tool / "*" / "qemu" / "bin" / qemu.binary)
    found += [("ESP-IDF tools folder", Path(p)) for p in sorted(glob.glob(pattern), reverse=True)]
    rejected = []
    for source, path in found:
        if path.is_file() and os.access(path, os.X_OK) and has_device(path, wifi.device):
            return path
        if source != "--qemu":
            rejected.append(f"{path} ({source})")
    why = f" (found but without it: {', '.join(rejected)})" if rejected else ""
    raise QemuNotFound(f"no {qemu.binary} with the {wifi.device} Wi-Fi model{why}; "
                       f"{wifi_hint(wifi)}")  # fmt: skip


def find_qemu(explicit: str | os.PathLike[str] | None = None, chip: Chip = chips.DEFAULT) -> Path:
    """Return Espressif's QEMU with the chip's machine (qemu-system-xtensa, esp32).

    Order: `explicit` (--qemu), ESP_QEMU, ~/.espressif/tools/qemu-xtensa/*/qemu/bin,
    then PATH. An explicit path that does not work is an error, not a fallback.
    """
    qemu = _profile(chip)
    hint = install_hint(chip)
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise QemuNotFound(f"--qemu {path} is not an executable file; {hint}")
        if not has_machine(path, qemu.machine):
            raise QemuNotFound(
                f"{path} has no {qemu.machine} machine (not Espressif's QEMU fork); {hint}"
            )
        return path
    rejected = []
    for source, path in _candidates(qemu):
        if path.is_file() and os.access(path, os.X_OK) and has_machine(path, qemu.machine):
            return path
        rejected.append(f"{path} ({source})")
    why = (f" (found but without the {qemu.machine} machine: {', '.join(rejected)})"
           if rejected else "")  # fmt: skip
    raise QemuNotFound(f"no {qemu.binary} with the {qemu.machine} machine{why}; {hint}")


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class CpuState:
    """Where one emulated CPU is: its PC and PS.INTLEVEL (0: tasks, 3: a FreeRTOS critical
    section, 4-5: a high-level interrupt handler), and how much host CPU time the QEMU
    thread that runs it has had so far (None: not known): a CPU that keeps its PC while its
    thread runs is spinning; one whose thread got no time was only not scheduled."""

    cpu: int
    pc: int
    intlevel: int
    host_time: float | None = None  # seconds of host CPU its vCPU thread has used

    def __str__(self) -> str:
        return f"CPU{self.cpu} at 0x{self.pc:08x}, interrupt level {self.intlevel}"


_CPU_REGS = re.compile(r"CPU#(\d+)\s+PC=([0-9a-f]+).*?\bPS=([0-9a-f]+)", re.S)
_XP_WORDS = re.compile(r"(?<=\s)0x([0-9a-f]{8})\b")  # `xp /Nwx`: `ADDR: 0xWORD 0xWORD ...`


@dataclass(frozen=True)
class MachineSetup:
    """What a QEMU is started with: the binary, PSRAM, the watchdogs, the boot strap, UART1,
    and the chip whose machine it runs."""

    qemu: Path
    psram: bool
    watchdogs: bool
    download: bool = False  # GPIO0 strapped low: the ROM's download mode (fixed at start-up)
    data_channel: bool = True  # UART1 wired to a socket of its own: a byte pipe for payloads
    trace_flash: bool = False  # the flash model can report its operations (flashtrace)
    chip: Chip = chips.DEFAULT
    network: bool = False  # the chip's Wi-Fi model on QEMU's user networking (a Wi-Fi build)


class Machine:
    """One emulated chip running a flash file.

    Use as a context manager; leaving it, by any path, kills QEMU and waits for it.
    """

    def __init__(self, setup: MachineSetup, flash: Path, run_dir: Path) -> None:
        self.setup, self.qemu, self.flash, self.run_dir = setup, setup.qemu, flash, run_dir
        self.data: socket.socket | None = None  # UART1: a byte pipe for payloads
        self.proc: subprocess.Popen[bytes] | None = None
        self.serial: socket.socket | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self._vcpu_threads: dict[int, int] | None = None  # cpu index -> host thread id

    def command(self, sockets: Path) -> list[str]:
        profile = _profile(self.setup.chip)
        cmd = [
            str(self.qemu),
            "-machine", profile.machine,
            "-display", "none",
            "-monitor", "none",
            *(self._nic(profile)),
            "-S",
            "-drive", f"file={self.flash},if=mtd,format=raw",
            "-chardev", f"socket,id=uart0,path={sockets / 'serial'}",
            "-serial", "chardev:uart0",
            *(["-chardev", f"socket,id=uart1,path={sockets / 'data'}",
               "-serial", "chardev:uart1"] if self.setup.data_channel else []),
            "-chardev", f"socket,id=qmp,path={sockets / 'qmp'}",
            "-mon", "chardev=qmp,mode=control",
        ]  # fmt: skip
        if self.setup.psram:
            cmd += ["-m", "4M"]
        if not self.setup.watchdogs:  # what ESP-IDF's `idf.py qemu` does (emulator.policy)
            cmd += profile.watchdogs_off()
        if self.setup.trace_flash:  # the trace log open, its events off until a recording
            cmd += ["-D", str(self.trace_path), "-d", f"trace:{flashtrace.ALWAYS_ON}"]
        if self.setup.download:  # the strap low at reset: the ROM waits for esptool
            cmd += profile.download_mode()
        return cmd

    def _nic(self, profile: chips.Qemu) -> list[str]:
        if not self.setup.network:
            return ["-nic", "none"]
        if profile.wifi is None:
            raise ImageError(f"no QEMU emulates the Wi-Fi of {self.setup.chip.name}")
        return profile.wifi.nic()

    def start(
        self, attach: Callable[[socket.socket], None] | None = None, timeout: float = 20.0
    ) -> socket.socket:
        """Launch paused, accept serial and QMP, call `attach(serial)`, then resume.

        The sockets live in a short private folder (a Unix socket path must fit 108
        bytes; run folders can be deep) that is removed once QEMU has connected.
        """
        sockets = janitor.mkdtemp(prefix="eoh-")
        try:
            return self._start(sockets, attach, timeout)
        finally:
            shutil.rmtree(sockets, ignore_errors=True)

    def _start(
        self, sockets: Path, attach: Callable[[socket.socket], None] | None, timeout: float
    ) -> socket.socket:
        listener = _listen(sockets / "serial")
        data_listener = _listen(sockets / "data") if self.setup.data_channel else None
        self.qmp = QEMUMonitorProtocol(str(sockets / "qmp"), server=True)
        cmd = self.command(sockets)
        with (self.run_dir / "qemu-cmdline.txt").open("a") as f:  # one line per start
            f.write(shlex.join(cmd) + "\n")
        log = open(self.run_dir / "qemu-stderr.log", "ab")  # noqa: SIM115 - child keeps it
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                # the Wi-Fi build prints every 802.11 frame it passes on its stdout
                stdout=subprocess.DEVNULL if self.setup.network else log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        _live.add(self)
        try:
            self.serial = self._accept(listener, timeout)
            if data_listener is not None:
                self.data = self._accept(data_listener, timeout)
            self.qmp.accept(timeout=max(1.0, timeout))
        except (OSError, TimeoutError, QMPError) as exc:
            # QEMU connects its sockets before it checks the machine (a flash size it
            # refuses): let it finish dying, then say what it said
            self.check_alive("startup", wait=5.0)
            raise HarnessError(f"QEMU did not connect its serial/QMP sockets: {exc}") from None
        finally:
            listener.close()
            if data_listener is not None:
                data_listener.close()
        if attach:
            attach(self.serial)
        self.qmp.cmd("cont")
        return self.serial

    def _accept(self, listener: socket.socket, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        listener.settimeout(0.1)
        while True:
            try:
                conn, _ = listener.accept()
                conn.setblocking(True)
                return conn
            except TimeoutError:
                self.check_alive("startup")
                if time.monotonic() > deadline:
                    raise

    def exit_status(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def describe_exit(self) -> str:
        code = self.exit_status()
        if code is None:
            return "running"
        return f"signal {-code}" if code < 0 else f"exit code {code}"

    def check_alive(self, during: str, wait: float = 0.0) -> None:
        """Raise QemuExited, with QEMU's own last words, if the process is gone.

        `wait`: the serial socket already closed, so give QEMU that long to finish dying.
        """
        if self.proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(wait)
        if self.proc.poll() is None:
            return
        stderr = (self.run_dir / "qemu-stderr.log").read_text(errors="replace").strip()
        said = f": {stderr.splitlines()[-1]}" if stderr else ""
        message = f"QEMU exited ({self.describe_exit()}) during {during}{said}"
        if "assertion failed" in stderr or "Bail out!" in stderr:
            raise QemuCrashed(message + " (QEMU itself crashed: a QEMU bug, not the firmware)")
        raise QemuExited(message)

    def cpu_states(self, timeout: float = 3.0) -> list[CpuState]:
        """Each emulated CPU's PC and interrupt level (HMP `info registers -a`): where a
        guest that stopped answering is stuck. Empty when QEMU cannot say within `timeout`
        (a starved host can keep QEMU's monitor from answering too).

        A running machine is stopped for the look and resumed after it: QEMU's xtensa
        register dump writes the CPU's physical register file from its window
        (`xtensa_sync_phys_from_window`), from the monitor's thread, so dumping a CPU
        that runs corrupts its registers (a guest looked at this way while it made calls
        panicked within seconds; docs/known-behaviour.md)."""
        if self.qmp is None or self.exit_status() is not None:
            return []
        status = self.vm_status(timeout)
        if status is None:  # not even its run state: a dump now could hit a running CPU
            return []
        running = status == "running"
        dump = {"command-line": "info registers -a"}
        self.qmp.settimeout(timeout)
        try:
            if running:
                self.qmp.cmd("stop")  # returns once every vCPU has left its translated code
            try:
                text = self.qmp.cmd("human-monitor-command", **dump)
            finally:
                if running:
                    self.qmp.cmd("cont")
        except Exception:  # a diagnosis only: QMP errors, timeouts, a socket gone
            return []
        finally:
            self.qmp.settimeout(None)
        times = self._thread_times()
        return [
            CpuState(int(cpu), int(pc, 16), int(ps, 16) & 0xF, times.get(int(cpu)))
            for cpu, pc, ps in _CPU_REGS.findall(str(text))
        ]

    def _thread_times(self) -> dict[int, float]:
        """Host CPU seconds each vCPU thread has used (QMP `query-cpus-fast` names the
        threads, /proc counts their time); empty where either cannot say."""
        if self._vcpu_threads is None:
            try:
                assert self.qmp is not None
                reply: Any = self.qmp.cmd("query-cpus-fast")
                self._vcpu_threads = {int(c["cpu-index"]): int(c["thread-id"]) for c in reply}
            except Exception:  # a diagnosis only
                return {}
        assert self.proc is not None
        tick = os.sysconf("SC_CLK_TCK")
        times = {}
        for cpu, tid in self._vcpu_threads.items():
            try:
                stat = Path(f"/proc/{self.proc.pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after the thread's name
            times[cpu] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        return times

    def vm_status(self, timeout: float = 3.0) -> str | None:
        """QMP `query-status`: "running", "paused" (stopped over QMP), "internal-error", ...;
        None when QEMU cannot say within `timeout` or is gone."""
        if self.qmp is None or self.exit_status() is not None:
            return None
        self.qmp.settimeout(timeout)
        try:
            reply = self.qmp.cmd("query-status")
        except Exception:  # a diagnosis only, as cpu_states
            return None
        finally:
            self.qmp.settimeout(None)
        status = reply.get("status") if isinstance(reply, dict) else None
        return status if isinstance(status, str) else None

    def read_words(self, address: int, count: int, timeout: float = 3.0) -> list[int] | None:
        """`count` 32-bit words of the guest's physical memory from `address`, read as a
        CPU's load would be (HMP `xp`: a device's registers answer through its read op,
        so the DPORT's MMU table reads as its entries); None when QEMU cannot say."""
        if self.qmp is None or self.exit_status() is not None:
            return None
        self.qmp.settimeout(timeout)
        try:
            text = self.qmp.cmd("human-monitor-command",
                                **{"command-line": f"xp /{count}wx {address:#x}"})  # fmt: skip
        except Exception:  # a diagnosis only, as cpu_states
            return None
        finally:
            self.qmp.settimeout(None)
        words = [int(w, 16) for w in _XP_WORDS.findall(str(text))]
        return words if len(words) == count else None

    def guest_resets(self) -> int:
        """How many times the guest reset itself (QMP `RESET` events with `guest: true`:
        a software, watchdog or panic reset) since the last call, or since start."""
        if self.qmp is None or self.exit_status() is not None:
            return 0
        try:
            events = self.qmp.get_events(wait=False)
        except Exception:  # a diagnosis only
            return 0
        return sum(e.get("event") == "RESET" and bool(e.get("data", {}).get("guest"))
                   for e in events)  # fmt: skip

    @property
    def trace_path(self) -> Path:
        return self.run_dir / flashtrace.TRACE_FILE

    def trace_flash(self, on: bool, events: tuple[str, ...] = flashtrace.EVENTS) -> None:
        """Switch the flash model's operation events (or what it reads,
        flashtrace.READ_EVENTS) on or off."""
        if not self.setup.trace_flash:
            raise HarnessError("this QEMU was started without a flash trace")
        for name in events:
            try:
                self._qmp("trace-event-set-state", name=name, enable=on)
            except HarnessError as exc:
                raise FlashTraceUnavailable(f"{self.qemu} cannot report its flash operations "
                                            f"(trace event {name}): {exc}") from None  # fmt: skip

    def pause(self) -> None:
        """Stop the emulated CPUs; QEMU finishes the flash writes in flight first."""
        self._qmp("stop")

    def _qmp(self, command: str, **args: object) -> None:
        """A QMP command whose failure is a harness error naming it (QEMU may be gone)."""
        if self.qmp is None:
            raise HarnessError(f"QMP `{command}`: QEMU is not running")
        try:
            self.qmp.cmd(command, **args)
        except (QMPError, OSError) as exc:
            self.check_alive(f"QMP `{command}`", wait=1.0)
            raise HarnessError(f"QEMU did not do QMP `{command}`: {exc}") from None

    def reset(self) -> None:
        """Hard reset, as the EN pin would: the ROM banner shows a fresh boot."""
        assert self.qmp is not None
        self.qmp.cmd("system_reset")

    def stop(self, graceful: bool = False) -> None:
        """Kill QEMU and wait for it. Safe to call more than once, from any path.

        `graceful` asks QEMU to quit first (QMP `quit`), so flash writes still in flight
        reach the file: what a power cycle on the same flash file needs.
        """
        if graceful and self.qmp is not None and self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.qmp.cmd("quit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
        proc, self.proc = self.proc, None
        _live.discard(self)
        for sock in (self.serial, self.data):
            if sock is not None:
                sock.close()
        self.serial = self.data = None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc is not None:
            proc.wait()
            self.proc = proc  # keep the exit status readable
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.close()
            self.qmp = None

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all() -> None:
    """Kill every QEMU this process started (atexit and signal handlers call this)."""
    for machine in list(_live):
        machine.stop()


atexit.register(stop_all)


_BINARIES = tuple({c.qemu.binary.encode() for c in chips.CHIPS if c.qemu is not None})


def running_qemus(marker: str = "") -> list[tuple[int, str]]:
    """(pid, command line) of every live QEMU of a chip's whose command line has `marker`.

    Reads the process table, so it also sees QEMUs that no handle of ours knows of.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if (entry / "stat").read_text().split(")")[-1].split()[0] == "Z":
                continue  # a zombie is dead; its parent just has not reaped it yet
        except OSError:
            continue
        if argv and argv[0].endswith(_BINARIES):
            line = b" ".join(argv).decode(errors="replace")
            if marker in line:
                found.append((int(entry.name), line))
    return found
