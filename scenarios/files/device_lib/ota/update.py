"""A device-side OTA library in the shape of micropython-esp32-ota's `ota.update`.

The harness's tests use it as "the user's library under test": it reads the update
from a file in the vfs, writes it block by block into the next OTA slot, checks the
SHA-256 by reading the slot back, calls set_boot() and resets, as the reporter's did.
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


def from_file(filename, sha="", length=0, verify=True, verbose=True, reboot=True):
    part = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    written = 0
    with open(filename, "rb") as f:
        block = 0
        while True:
            got = f.readinto(buf)
            if not got:
                break
            if got < BLOCK:
                buf[got:] = b"\xff" * (BLOCK - got)
            part.writeblocks(block, buf)
            h.update(memoryview(buf)[:got])
            written += got
            block += 1
    digest = binascii.hexlify(h.digest()).decode()
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
