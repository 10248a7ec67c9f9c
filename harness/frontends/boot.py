"""`harness boot`: a firmware on the emulated board, for a person or the person's own tools.

Three ways: `--exec CODE` (print its output, exit), an interactive serial monitor
(Ctrl-] quits), or `--pty` (the UART served as a pty and an RFC2217 port until Ctrl-C or
SIGTERM, then a summary of what booted). Every way comes through the one path from a
firmware to a board (harness.emulator.launch: its recipe, its run policy), so the board
is the one a scenario or a test gets; the command's parser is
harness.frontends.commands.boot.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import termios
import threading
import tty
from pathlib import Path

from ..emulator import device
from ..emulator.device import BootOptions, Device
from ..emulator.launch import Launch
from ..errors import DeviceError, HarnessError

QUIT_KEY = b"\x1d"  # Ctrl-], as in telnet and idf.py monitor


def check(args: argparse.Namespace) -> None:
    """Options that cannot go together, refused before anything is built."""
    if args.pty and args.exec is not None:
        raise HarnessError("--pty serves the board to your own tools until Ctrl-C; it cannot "
                           "run --exec too: use one or the other")  # fmt: skip
    if args.download and not args.pty:
        raise HarnessError("--download needs --pty: download mode is for esptool over the port")


def run(args: argparse.Namespace, ready: Launch, image: Path) -> int:
    """Boot `image` of the firmware `ready` (harness.emulator.launch) as the options say."""
    if args.pty:
        options = BootOptions(ready.policy, qemu=args.qemu, artifacts=args.artifacts or Path(
            "artifacts"), serve=True, download=args.download)  # fmt: skip
        return serve(image, options, args.timeout)
    with device.boot(image, BootOptions(ready.policy, qemu=args.qemu,
                                        artifacts=args.artifacts)) as dev:  # fmt: skip
        if args.exec is None:
            return interact(dev)
        dev.wait_prompt(args.timeout)  # a stall after the bootloader is named as one
        try:
            out = dev.repl.exec(args.exec, timeout=args.timeout)
        except DeviceError as exc:
            sys.stdout.write(exc.output)
            print(exc.traceback, file=sys.stderr)
            return 1
        sys.stdout.write(out)
        return 0


def serve(image: Path, options: BootOptions, timeout: float) -> int:
    """Serve the board's UART until Ctrl-C or SIGTERM; then say what booted."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with device.boot(image, options) as dev:
        board = dev.board
        before = dev.flash_state()
        if not options.download:  # the port is handed out ready: MicroPython at its prompt
            dev.wait_prompt(timeout)
        port = board.port
        assert port is not None  # served: the options said so
        print(f"serial: {port.pty}")
        print(f"rfc2217: {port.rfc2217}")
        # esptool 5's default stub never starts under this QEMU (docs/known-behaviour.md)
        print(f"esptool: ESPTOOL_STUB_VERSION=1 esptool --port {port.rfc2217} flash-id",
              flush=True)  # fmt: skip
        print("--- harness boot --pty: Ctrl-C or SIGTERM ends it ---", file=sys.stderr, flush=True)
        try:
            while not stop.wait(0.5):
                board.check_alive("serving the port")
        except KeyboardInterrupt:
            pass
        booted = _what_booted(dev)
        after = dev.flash_state()
        print(f"booted:    {booted}")
        print(f"otadata:   before [{', '.join(before.states())}], after "
              f"[{', '.join(after.states())}]; bootloader will pick {after.boot.slot}")  # fmt: skip
        print(f"resets:    {board.power_cycles} power cycles by DTR/RTS")
        print(f"artifacts: {dev.run_dir}")
    return 0


def _what_booted(dev: Device) -> str:
    board = dev.board
    if board.in_download_mode:
        return "download mode (the ROM waits for esptool)"
    client = board.client()
    if client is not None:
        return f"not asked: a client still has the port ({client})"
    try:
        dev.console.drain()
        dev.repl.wake()  # the last client, or esptool's hard reset, left it so
        return dev.running_partition()
    except HarnessError as exc:
        return f"not known ({str(exc).splitlines()[0]})"


def interact(dev: Device) -> int:
    """A serial monitor: keys go to the REPL, Ctrl-] quits (QEMU is reaped on exit)."""
    stdin = sys.stdin.fileno()
    is_tty = os.isatty(stdin)
    print("--- harness boot: Ctrl-] quits ---", file=sys.stderr, flush=True)
    saved = termios.tcgetattr(stdin) if is_tty else None
    if is_tty:
        tty.setraw(stdin)
    try:
        os.write(sys.stdout.fileno(), dev.console.read_available())
        stdin_open = True
        while True:
            watch = [dev.console.sock] + ([stdin] if stdin_open else [])
            ready, _, _ = select.select(watch, [], [], 0.2)
            dev.board.check_alive("the interactive session")
            if stdin in ready:
                keys = os.read(stdin, 1024)
                if not keys:  # piped input ended: keep showing output until Ctrl-C
                    stdin_open = False
                elif QUIT_KEY in keys:
                    dev.console.send(keys.split(QUIT_KEY)[0])
                    return 0
                else:
                    dev.console.send(keys.replace(b"\n", b"\r") if not is_tty else keys)
            if dev.console.sock in ready:
                os.write(sys.stdout.fileno(), dev.console.read_available())
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            print(file=sys.stderr)
