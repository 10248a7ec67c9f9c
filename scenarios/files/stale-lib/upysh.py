# An old copy of micropython-lib's upysh, left in /lib by an earlier install: it predates
# cp(), which the new build's frozen upysh has. It plays the part of MicroPythonOS's stale
# lib/mpos: the same module name, an older API.
import os


def ls(path="."):
    for name in os.listdir(path):
        print(name)


def cat(path):
    with open(path) as f:
        print(f.read())
