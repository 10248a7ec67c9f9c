"""The host's HTTP server a networked board downloads from, and the ways it fails on purpose.

It listens on 127.0.0.1 at a port the kernel picks (QEMU's user networking carries the
guest's 10.0.2.2 to the host's 127.0.0.1, harness.chips.Wifi), serves files named by URL
path from memory, and logs every request as a `Served` record: what was asked, what the
headers said, how many body bytes went out and how it ended. A file can misbehave
(`Misbehaviour`): the connection closes after N body bytes, stalls S seconds, says a
wrong Content-Length, answers 404 with an HTML page, flips bytes in flight, or trickles
at B bytes a second; `misbehave()` changes that between requests (a sweep of
interrupted downloads does). Use it as a context manager: leaving it, by any path, stops
the server and its threads.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..served import Served

CHUNK = 1024  # body bytes per write: fine enough for close_after, stalls and the rate
NOT_FOUND_PAGE = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
                  b"<body><h1>Not Found</h1><p>The requested URL was not found on this "
                  b"server.</p></body></html>\n")  # fmt: skip


@dataclass(frozen=True)
class Misbehaviour:
    """How one file is served wrong on purpose (all None/empty: served right)."""

    close_after: int | None = None  # body bytes sent, then the connection is closed
    stall_after: int | None = None  # body bytes sent, then `stall_s` seconds of silence
    stall_s: float = 0.0
    content_length: int | None = None  # the Content-Length header says this instead
    not_found: bool = False  # 404 with an HTML page instead of the file
    flip: tuple[int, ...] = ()  # body offsets whose byte is inverted (XOR 0xff) in flight
    rate: int | None = None  # bytes a second, a slow link

    def describe(self) -> str:
        """In words, for the request log ("" when none)."""
        said = []
        if self.not_found:
            said.append("404 with an HTML page")
        if self.close_after is not None:
            said.append(f"closed after {self.close_after} bytes")
        if self.stall_after is not None:
            said.append(f"stalled {self.stall_s:g} s after {self.stall_after} bytes")
        if self.content_length is not None:
            said.append(f"Content-Length: {self.content_length}")
        if self.flip:
            said.append(f"{len(self.flip)} byte(s) flipped from {self.flip[0]}")
        if self.rate is not None:
            said.append(f"{self.rate} B/s")
        return ", ".join(said)


@dataclass
class _File:
    data: bytes
    misbehaviour: Misbehaviour = field(default_factory=Misbehaviour)
    content_type: str = "application/octet-stream"


class HttpServer:
    """A threaded HTTP server on 127.0.0.1 serving `files` (URL path -> bytes)."""

    def __init__(self, files: Mapping[str, bytes], *,
                 misbehaviour: Mapping[str, Misbehaviour] | None = None,
                 on_request: Callable[[Served], None] | None = None) -> None:  # fmt: skip
        self.files = {_path(p): _File(data, content_type=_type(p)) for p, data in files.items()}
        for path, how in (misbehaviour or {}).items():
            self.misbehave(path, how)
        self.requests: list[Served] = []
        self.on_request = on_request
        self.lock = threading.Lock()
        self.clock = time.monotonic()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, host: str = "127.0.0.1") -> str:
        """The base URL, as `host` reaches it (the guest: 10.0.2.2)."""
        return f"http://{host}:{self.port}"

    def count_from(self, start: float) -> None:
        """Time requests from `start` (time.monotonic()): the serial log's, so both read
        on one clock."""
        self.clock = start

    def misbehave(self, path: str, how: Misbehaviour) -> None:
        """Serve `path` as `how` says from the next request on."""
        served = self.files.get(_path(path))
        if served is None:
            raise KeyError(f"the server has no file {path!r}")
        served.misbehaviour = how

    def add(self, path: str, data: bytes) -> None:
        self.files[_path(path)] = _File(data, content_type=_type(path))

    def start(self) -> HttpServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="harness-http",
                                       kwargs={"poll_interval": 0.1}, daemon=True)  # fmt: skip
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call more than once."""
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join(5)
            self.thread = None
        self.httpd.server_close()

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, served: Served) -> None:
        with self.lock:  # one request at a time reaches `on_request` (it may write a file)
            self.requests.append(served)
            if self.on_request is not None:
                self.on_request(served)


def _path(path: str) -> str:
    return "/" + path.lstrip("/")


def _type(path: str) -> str:
    if path.endswith(".json"):
        return "application/json"
    if path.endswith((".html", ".htm")):
        return "text/html"
    if path.endswith(".txt"):
        return "text/plain"
    return "application/octet-stream"


def _handler(server: HttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "esp32-ota-harness"

        def do_GET(self) -> None:  # http.server's name
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def log_message(self, format: str, *args: Any) -> None:
            """Requests go to the typed log, not stderr."""

        def _serve(self, body: bool) -> None:
            start = time.monotonic()
            path = self.path.split("?", 1)[0]
            found = server.files.get(path)
            how = found.misbehaviour if found is not None else Misbehaviour(not_found=True)
            if found is None or how.not_found:
                status, data, ctype = 404, NOT_FOUND_PAGE, "text/html"
            else:
                status, data, ctype = 200, found.data, found.content_type
            declared = how.content_length if how.content_length is not None else len(data)
            self.close_connection = True
            sent, outcome = 0, "complete"
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(declared))
                self.send_header("Connection", "close")
                self.end_headers()
                if body:
                    sent, outcome = _send_body(self.wfile, self.connection, data, how)
            except OSError as exc:  # the board hung up (reset, power cut, its own timeout)
                outcome = f"the client went away after {sent} bytes ({type(exc).__name__})"
            fault = how.describe() if found is not None else ""
            server.log(Served(self.command, self.path, status, len(data), declared, sent,
                              outcome, round(start - server.clock, 3),
                              round(time.monotonic() - start, 3), self.client_address[0],
                              fault))  # fmt: skip

    return Handler


def _send_body(wfile: Any, conn: socket.socket, data: bytes, how: Misbehaviour) -> tuple[int, str]:
    """Write the body as `how` says; (bytes sent, how it ended)."""
    if how.flip:
        flipped = bytearray(data)
        for offset in (o for o in how.flip if o < len(flipped)):
            flipped[offset] ^= 0xFF
        data = bytes(flipped)
    end = len(data) if how.close_after is None else min(how.close_after, len(data))
    stall = min(how.stall_after, end) if how.stall_after is not None else end
    begun = time.monotonic()
    _write(wfile, data, (0, stall), how.rate, begun)
    if how.stall_after is not None:
        wfile.flush()
        time.sleep(how.stall_s)
    _write(wfile, data, (stall, end), how.rate, begun)
    wfile.flush()
    if end < len(data):
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        return end, f"closed after {end} of {len(data)} bytes (asked)"
    return end, "complete"


def _write(wfile: Any, data: bytes, span: tuple[int, int], rate: int | None, begun: float) -> None:
    """data[start:end] in chunks, no faster than `rate` bytes a second since `begun`."""
    start, end = span
    for at in range(start, end, CHUNK):
        upto = min(at + CHUNK, end)
        wfile.write(data[at:upto])
        if rate:
            wfile.flush()
            ahead = upto / rate - (time.monotonic() - begun)
            if ahead > 0:
                time.sleep(ahead)


def misbehaving(how: Misbehaviour, **changes: Any) -> Misbehaviour:
    """`how` with `changes` (a sweep's point: `close_after=N`)."""
    return replace(how, **changes)
