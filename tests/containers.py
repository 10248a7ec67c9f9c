"""What building docker/Dockerfile needs on a machine without a registry or the internet.

Each stand-in is named when it is used (the docker test prints them):

- the base image: `python:3.12-slim-bookworm` when the engine has it or can pull it, else
  Debian bookworm with its own python3 and pip, made with debootstrap and imported;
- Espressif's QEMU release: a tarball in the release's layout (`qemu/bin/qemu-system-xtensa`,
  `qemu/share/qemu`) made from the QEMU on this machine, with the shared libraries it
  needs beyond the Dockerfile's packages, served over loopback HTTP, so the Dockerfile's
  own download, checksum, unpack and `-machine help` check all run;
- esp32-open-mac's QEMU source at the pinned commit (the Wi-Fi QEMU's build stage, and
  `harness qemu install --wifi`): an archive of the tree with ui/keycodemapdb filled in,
  made with `git archive` from git directories holding both (QEMU_WIFI_GIT,
  KEYCODEMAPDB_GIT: the `fetch` of github:esp32-open-mac/qemu and github:qemu/keycodemapdb),
  served over loopback like the release;
- running inside: `ENGINE run` where the engine may run containers (podman, where its
  defaults are refused, with tools/containers.conf: runc and explicit ulimits), else a
  build stage `FROM` the image whose `RUN` is the command.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BASE = "python:3.12-slim-bookworm"
STAND_IN_BASE = "localhost/esp32-ota-harness-base:bookworm-stand-in"
HOST_PIP_BASE = "localhost/esp32-ota-harness-base:with-host-pip"
# what the stand-in base needs to be like the official image: python3, pip, certificates
BASE_PACKAGES = "python3,python3-pip,python3-venv,ca-certificates"
# the C library's own: the image's glibc provides them
SYSTEM_LIBS = ("linux-vdso", "libc.so", "libm.so", "ld-linux", "libpthread", "libdl.so", "librt.so")
# the machine's pip settings and the certificate bundle they name, for pip inside a build
PIP_MOUNTS = ("/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt")
# podman's settings where its defaults may not run containers (crun refused in a sandbox)
RUNC_CONF = Path(__file__).resolve().parent.parent / "tools" / "containers.conf"


@dataclass(frozen=True)
class Engine:
    """docker or podman, with what this machine lets it do."""

    path: str
    conf: Path | None = None  # podman's CONTAINERS_CONF, when not its defaults

    @property
    def name(self) -> str:
        return Path(self.path).name

    def build_args(self) -> list[str]:
        """podman builds without a daemon; in a sandbox, with chroot isolation."""
        extra = ["--isolation", "chroot"] if self.name == "podman" else []
        mounts = [f"-v={p}:{p}:ro" for p in PIP_MOUNTS if Path(p).is_file()]
        return [self.path, "build", *extra, "--network", "host", *mounts]

    def environ(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)} if self.conf else dict(os.environ)

    def run(self, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.path, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.environ())  # fmt: skip

    def has_image(self, name: str) -> bool:
        return self.run("image", "exists", name).returncode == 0 if self.name == "podman" else (
            self.run("image", "inspect", name).returncode == 0)  # fmt: skip

    def can_run(self, image: str) -> str | None:
        """None when `run` works here; else why not, in the engine's own words."""
        probe = self.run("run", "--rm", "--entrypoint", "true", image, timeout=120)
        return None if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["?"])[-1]


def with_runc(eng: Engine) -> Engine | None:
    """podman with tools/containers.conf (runc, explicit ulimits), where runc is installed."""
    if eng.name != "podman" or shutil.which("runc") is None:
        return None
    return Engine(eng.path, RUNC_CONF)


def engine() -> Engine | None:
    """The engine `make test-docker` chose (`DOCKER`: docker where its daemon answers,
    else podman; the Makefile decides, once); None when it is not set or not installed."""
    name = os.environ.get("DOCKER", "")
    path = shutil.which(name) if name else None
    return Engine(path) if path else None


def base_image(eng: Engine, work: Path) -> tuple[str, str]:
    """(image, what it is): the official base when it can be had, else the stand-in."""
    if eng.has_image(BASE) or eng.run("pull", BASE, timeout=120).returncode == 0:
        return BASE, f"{BASE} (the official image)"
    if not eng.has_image(STAND_IN_BASE):
        root = work / "rootfs"
        strap = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
             str(root)], capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if strap.returncode != 0:
            raise RuntimeError(f"debootstrap failed: {strap.stderr.strip()[-500:]}")
        # like the official image: `python`, `pip`, and pip installing into the image
        (root / "usr/local/bin/python").symlink_to("/usr/bin/python3")
        (root / "usr/local/bin/pip").symlink_to("/usr/bin/pip3")
        for marker in (root / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([eng.path, "import", "-", STAND_IN_BASE], stdin=tar.stdout,
                                  capture_output=True, text=True, timeout=600)  # fmt: skip
        tar.wait()
        shutil.rmtree(root, ignore_errors=True)
        if imported.returncode != 0:
            raise RuntimeError(f"{eng.name} import failed: {imported.stderr.strip()}")
    return STAND_IN_BASE, (
        f"{STAND_IN_BASE}: Debian bookworm (debootstrap minbase) with its python3 and pip, "
        f"standing in for {BASE}, which no registry here serves"
    )


def with_host_pip(eng: Engine, base: str, work: Path) -> tuple[str, str]:
    """(image, what it is): `base` with this machine's pip settings and the certificate
    bundle they name, for a `docker build` that cannot mount them (the Docker API)."""
    files = [Path(p) for p in PIP_MOUNTS if Path(p).is_file()]
    if not files:
        return base, base
    context = work / "host-pip"
    context.mkdir(parents=True, exist_ok=True)
    lines = [f"FROM {base}"]
    for i, path in enumerate(files):
        shutil.copyfile(path, context / f"file{i}")
        lines.append(f"COPY file{i} {path}")
    (context / "Containerfile").write_text("\n".join(lines) + "\n")
    built = eng.run(*eng.build_args()[1:], "-f", str(context / "Containerfile"), "-t",
                    HOST_PIP_BASE, str(context))  # fmt: skip
    if built.returncode != 0:
        raise RuntimeError(f"{eng.name} build of {HOST_PIP_BASE} failed: {built.stderr[-500:]}")
    return HOST_PIP_BASE, f"{HOST_PIP_BASE}: {base} with this machine's {', '.join(PIP_MOUNTS)}"


def qemu_release_tarball(qemu: Path) -> bytes:
    """This machine's QEMU in the layout of Espressif's release archive (.tar.xz).

    `qemu/bin/qemu-system-xtensa` starts the real binary (`qemu/libexec/`) with the shared
    libraries it was linked against beyond the Dockerfile's packages (`qemu/lib/`); QEMU
    finds its ROMs from the real binary's place, in `qemu/share/qemu`.
    """
    top = qemu.parent.parent  # .../qemu
    ldd = subprocess.run(["ldd", str(qemu)], capture_output=True, text=True, check=True).stdout
    libs = [Path(line.split("=>")[1].split()[0]) for line in ldd.splitlines()
            if "=>" in line and not any(s in line for s in SYSTEM_LIBS)]  # fmt: skip
    wrapper = (
        b'#!/bin/sh\nhere="$(dirname "$(readlink -f "$0")")/.."\n'
        b'LD_LIBRARY_PATH="$here/lib" exec "$here/libexec/qemu-system-xtensa" "$@"\n'
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz", preset=1) as tar:

        def add(data: bytes, name: str, mode: int) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        add(wrapper, "qemu/bin/qemu-system-xtensa", 0o755)
        add(qemu.read_bytes(), "qemu/libexec/qemu-system-xtensa", 0o755)
        for lib in libs:
            add(lib.resolve().read_bytes(), f"qemu/lib/{lib.name}", 0o644)
        tar.add(str(top / "share" / "qemu"), arcname="qemu/share/qemu")
    return buf.getvalue()


def wifi_source_gits() -> tuple[str, str]:
    """The git directories of the Wi-Fi QEMU's tree and of its submodule, from
    QEMU_WIFI_GIT and KEYCODEMAPDB_GIT; RuntimeError saying so without them."""
    gits = os.environ.get("QEMU_WIFI_GIT", ""), os.environ.get("KEYCODEMAPDB_GIT", "")
    if not all(gits):
        raise RuntimeError("set QEMU_WIFI_GIT and KEYCODEMAPDB_GIT to git directories of "
                           "github:esp32-open-mac/qemu and github:qemu/keycodemapdb")  # fmt: skip
    return gits


def qemu_wifi_source() -> tuple[bytes, str]:
    """(archive, what it is): the Wi-Fi QEMU's source at its pinned commit, as a .tar.gz
    with one top folder and its submodule filled in, from wifi_source_gits()."""
    from harness.sources.qemubuild import WIFI

    qemu_git, keys_git = wifi_source_gits()
    [path] = WIFI.submodules
    listed = subprocess.run(["git", "-C", qemu_git, "ls-tree", WIFI.commit, path],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    gitlink = listed.split()[2]
    top = f"qemu-{WIFI.commit[:10]}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as out:
        for git, commit, prefix in ((qemu_git, WIFI.commit, f"{top}/"),
                                    (keys_git, gitlink, f"{top}/{path}/")):  # fmt: skip
            tree = subprocess.run(["git", "-C", git, "archive", "--format=tar",
                                   f"--prefix={prefix}", commit], capture_output=True,
                                  check=True).stdout  # fmt: skip
            with tarfile.open(fileobj=io.BytesIO(tree)) as part:
                for member in part.getmembers():
                    if member.name.rstrip("/") == f"{top}/{path}" and member.isdir():
                        continue  # the submodule's empty folder comes with its own tree
                    out.addfile(member, part.extractfile(member) if member.isfile() else None)
    return buf.getvalue(), (
        f"esp32-open-mac's QEMU source at {WIFI.commit[:10]} with {path} at {gitlink[:10]}, "
        f"packed with `git archive` from {qemu_git} and {keys_git}, standing in for the "
        f"tree GitHub serves"
    )


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def served(folder: Path) -> Iterator[str]:
    """`folder` over HTTP on loopback; yields its base URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Timed:
    result: subprocess.CompletedProcess[str]
    seconds: float


def timed(args: list[str], cwd: Path, timeout: float = 3600,
          env: dict[str, str] | None = None) -> Timed:  # fmt: skip
    start = time.monotonic()
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env)  # fmt: skip
    return Timed(result, round(time.monotonic() - start, 1))
