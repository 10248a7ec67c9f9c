"""A device-side OTA library in the shape of micropython-esp32-ota's `ota.update`.

The harness's tests use it as "the user's library under test": it reads the update
from a file in the vfs, or downloads it (`http://...`, through MicroPython's `requests`,
streaming the response's raw socket), writes it block by block into the next OTA slot,
checks the length when given one and the SHA-256 by reading the slot back, calls
set_boot() and resets, as the reporter's did. `from_json` finds the update through a
JSON manifest ({"firmware", "sha", "length"}), read with json.load() from the response.
"""

import binascii
import hashlib

import esp32
import machine

BLOCK = 4096


def _hash_slot(part, length):
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    for block in range((length + BLOCK - 1) // BLOCK):
        part.readblocks(block, buf)
        h.update(memoryview(buf)[: min(BLOCK, length - block * BLOCK)])
    return binascii.hexlify(h.digest()).decode()


class _Closing:
    """A response's stream as a context manager (MicroPython's sockets are not one)."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        self.f.close()


def open_url(url):
    """A file, or an http URL's response body as a stream; a status other than 200 is an
    error, as the library's."""
    if url.split(":", 1)[0] in ("http", "https"):
        import requests

        r = requests.get(url)
        if r.status_code != 200:
            r.close()
            raise ValueError("HTTP Error: %d" % r.status_code)
        return _Closing(r.raw)
    return open(url, "rb")


def from_json(url, verify=True, verbose=True, reboot=True):
    """The update a JSON manifest names ({"firmware": URL or name beside it, "sha",
    "length"}), read with json.load() from the response's stream."""
    import json

    with open_url(url) as f:
        data = json.load(f)
    firmware = data["firmware"]
    if not any(firmware.startswith(p) for p in ("http:", "https:", "/")):
        firmware = url.rsplit("/", 1)[0] + "/" + firmware
    from_file(firmware, data["sha"], data["length"], verify, verbose, reboot)


def _fill(f, buf):
    """Read until `buf` is full or the stream ends (a socket returns what has come)."""
    mv = memoryview(buf)
    got = 0
    while got < len(buf):
        n = f.readinto(mv[got:])
        if not n:
            break
        got += n
    return got


def from_file(filename, sha="", length=0, verify=True, verbose=True, reboot=True):
    part = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    written = 0
    with open_url(filename) as f:
        block = 0
        while True:
            got = _fill(f, buf)
            if not got:
                break
            if got < BLOCK:
                buf[got:] = b"\xff" * (BLOCK - got)
            part.writeblocks(block, buf)
            h.update(memoryview(buf)[:got])
            written += got
            block += 1
    digest = binascii.hexlify(h.digest()).decode()
    if length and written != length:
        raise ValueError("Received %d bytes (expected %d)" % (written, length))
    if sha and sha != digest:
        raise ValueError("SHA mismatch: file %s, expected %s" % (digest, sha))
    if verify:
        if _hash_slot(part, written) != digest:
            raise ValueError("SHA verify failed")
        if verbose:
            print("SHA verify passed")
    part.set_boot()
    if verbose:
        print("OTA complete: %d bytes written to %s" % (written, part.info()[4]))
    if reboot:
        machine.reset()


def remove_stale_lib(frozen, lib="/lib"):
    """Delete the /lib copies of modules the new build freezes (`frozen`: their names, as
    the update's manifest lists them), so an old copy cannot shadow the new one."""
    import os

    for name in frozen:
        for path in ("%s/%s.py" % (lib, name), "%s/%s.mpy" % (lib, name)):
            try:
                os.remove(path)
                print("removed stale", path)
            except OSError:
                pass
