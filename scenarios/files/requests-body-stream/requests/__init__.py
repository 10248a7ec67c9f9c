"""`requests` in the shape of micropython-lib's newer releases, for one question only.

There the response's `raw` is a body reader written in Python (it counts the
Content-Length down): it has read() and close(), but no readinto() and, being a
Python object, not MicroPython's native stream protocol, which json.load() asks for
(extmod/modjson.c: mp_get_stream_raise(stream_obj, MP_STREAM_OP_READ); py/stream.c
raises `OSError: stream operation not supported`). The frozen `requests` of v1.21-v1.23
hands out the socket itself, a native stream. Only GET over plain HTTP, as the
scenarios use it.
"""

import socket


class BodyStream:
    def __init__(self, sock, remaining):
        self._sock = sock
        self._remaining = remaining

    def read(self, n=-1):
        if self._remaining == 0:
            return b""
        if n < 0 or (self._remaining is not None and n > self._remaining):
            n = self._remaining if self._remaining is not None else 4096
        data = self._sock.read(n)
        if self._remaining is not None:
            self._remaining -= len(data)
        return data

    def close(self):
        self._sock.close()


class Response:
    def __init__(self, raw, status_code):
        self.raw = raw
        self.status_code = status_code

    def close(self):
        self.raw.close()


def get(url):
    _, _, host, path = url.split("/", 3)
    host, port = host.split(":") if ":" in host else (host, 80)
    addr = socket.getaddrinfo(host, int(port))[0][-1]
    s = socket.socket()
    s.connect(addr)
    s.write(b"GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path, host))
    status = int(s.readline().split(None, 2)[1])
    length = None
    while True:
        line = s.readline()
        if not line or line == b"\r\n":
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return Response(BodyStream(s, length), status)
