"""The host's HTTP server and its faults on purpose, as a client on this host sees them
(no emulation: the board's side is tests/test_network.py)."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest

from harness.emulator.httpserver import NOT_FOUND_PAGE, HttpServer, Misbehaviour

DATA = bytes(range(256)) * 64  # 16 KiB


def get(server: HttpServer, path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and every body byte that came before the server closed."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_serves_a_file_on_loopback_and_logs_the_request() -> None:
    with HttpServer({"/fw.bin": DATA}) as server:
        assert server.httpd.server_address[0] == "127.0.0.1"
        status, headers, body = get(server, "/fw.bin")
        assert (status, headers["Content-Length"], body) == (200, str(len(DATA)), DATA)
    [served] = server.requests
    assert (served.method, served.path, served.status, served.sent, served.outcome) == (
        "GET",
        "/fw.bin",
        200,
        len(DATA),
        "complete",
    )


def test_the_server_is_gone_after_the_block() -> None:
    with HttpServer({"/a": b"x"}) as server:
        port = server.port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_close_after_n_bytes_is_a_short_body_under_the_full_length() -> None:
    with HttpServer(
        {"/fw.bin": DATA}, misbehaviour={"/fw.bin": Misbehaviour(close_after=5000)}
    ) as s:
        status, headers, body = get(s, "/fw.bin")
    assert (status, headers["Content-Length"], body) == (200, str(len(DATA)), DATA[:5000])
    assert s.requests[0].outcome == f"closed after 5000 of {len(DATA)} bytes (asked)"
    assert s.requests[0].fault == "closed after 5000 bytes"


def test_a_client_that_checks_the_length_notices_the_close() -> None:
    with HttpServer(
        {"/fw.bin": DATA}, misbehaviour={"/fw.bin": Misbehaviour(close_after=100)}
    ) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        conn.request("GET", "/fw.bin")
        with pytest.raises(http.client.IncompleteRead):
            conn.getresponse().read()
        conn.close()


def test_unknown_path_and_not_found_are_404_with_an_html_page() -> None:
    with HttpServer({"/fw.bin": DATA}) as s:
        assert get(s, "/nope.bin")[::2] == (404, NOT_FOUND_PAGE)
        s.misbehave("/fw.bin", Misbehaviour(not_found=True))
        status, headers, body = get(s, "/fw.bin")
    assert (status, headers["Content-Type"], body) == (404, "text/html", NOT_FOUND_PAGE)
    assert [r.status for r in s.requests] == [404, 404]


def test_wrong_content_length_is_said_and_the_real_body_sent() -> None:
    with HttpServer(
        {"/fw.bin": DATA}, misbehaviour={"/fw.bin": Misbehaviour(content_length=999999)}
    ) as s:
        _, headers, body = get(s, "/fw.bin")
    assert (headers["Content-Length"], body) == ("999999", DATA)
    assert (s.requests[0].declared, s.requests[0].length) == (999999, len(DATA))


def test_flipped_bytes_arrive_inverted_and_only_those() -> None:
    with HttpServer({"/fw.bin": DATA}, misbehaviour={"/fw.bin": Misbehaviour(flip=(0, 4096))}) as s:
        body = get(s, "/fw.bin")[2]
    diff = [i for i, (a, b) in enumerate(zip(body, DATA, strict=True)) if a != b]
    assert diff == [0, 4096] and body[0] == DATA[0] ^ 0xFF


def test_a_stall_holds_the_body_for_its_seconds() -> None:
    how = Misbehaviour(stall_after=1000, stall_s=1.0)
    with HttpServer({"/fw.bin": DATA}, misbehaviour={"/fw.bin": how}) as s:
        start = time.monotonic()
        body = get(s, "/fw.bin")[2]
        took = time.monotonic() - start
    assert body == DATA and 1.0 <= took < 5
    assert s.requests[0].elapsed_s >= 1.0


def test_a_slow_link_keeps_to_its_rate() -> None:
    with HttpServer({"/fw.bin": DATA}, misbehaviour={"/fw.bin": Misbehaviour(rate=8192)}) as s:
        start = time.monotonic()
        body = get(s, "/fw.bin")[2]
        took = time.monotonic() - start
    assert body == DATA and 1.5 <= took < 6  # 16 KiB at 8 KiB/s


def test_a_client_that_hangs_up_is_logged_as_gone() -> None:
    seen = threading.Event()
    with HttpServer({"/fw.bin": DATA * 64}, misbehaviour={"/fw.bin": Misbehaviour(rate=65536)},
                    on_request=lambda r: seen.set()) as s:  # fmt: skip
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        sock.sendall(b"GET /fw.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset, as a board's power cut leaves the connection
        assert seen.wait(10)
    assert s.requests[0].outcome.startswith("the client went away after")
