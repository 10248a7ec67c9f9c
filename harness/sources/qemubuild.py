"""Building the Wi-Fi QEMU (harness.chips.Wifi) from source, at its pinned commit.

No release carries esp32-open-mac's tree (Espressif's esp-develop `d96ca95c64` plus the
ESP32 Wi-Fi model of espressif/qemu PR #80), so `harness qemu install --wifi` builds it,
the way Espressif's 8.0 tree is built, into the folder the harness looks in, beside
Espressif's release. The source is git at the pinned commit (its submodule
`ui/keycodemapdb` at the commit the tree records), or a source archive from a mirror,
checked by sha256. The build backports upstream QEMU 8.1's removal of the mttcg
`g_assert(cpu->halted)` (unpatched, 8.0 aborts about 1 start in 120).

Standard library only, so the Dockerfile's build stage runs this very file
(`python qemubuild.py --tools DIR`): one recipe for both. Nothing half-built is left
behind: the build happens in a temporary folder, and the install is moved into place
whole, after the binary was probed for the model.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """A QEMU tree that no release carries, pinned to one commit."""

    name: str  # its folder under the tool's: esp32-open-mac_<commit[:10]>
    git: str
    commit: str  # 40 hex digits: git checks the tree by it
    submodules: dict[str, str] = field(default_factory=dict)  # path -> git URL
    device: str = ""  # the model the build must have (`-device NAME,help`)

    @property
    def folder(self) -> str:
        return f"{self.name}_{self.commit[:10]}"


WIFI = Source(
    "esp32-open-mac",
    "https://github.com/esp32-open-mac/qemu.git",
    "4a5c772afec5eef22716a908e115ebd1062210fa",
    {"ui/keycodemapdb": "https://gitlab.com/qemu-project/keycodemapdb.git"},
    "misc.esp32_wifi",
)
BINARY = "qemu-system-xtensa"
MESON = "meson==0.63.3"  # the meson QEMU 8.0 ships as its own submodule
CONFIGURE = [
    "--target-list=xtensa-softmmu", "--enable-gcrypt", "--enable-slirp", "--disable-werror",
    "--disable-docs", "--disable-tools", "--disable-capstone", "--disable-sdl", "--disable-gtk",
    "--disable-vnc",
]  # fmt: skip
# (file, line removed): upstream 8.1's fix of the mttcg assertion
DROP_LINES = [("accel/tcg/tcg-accel-ops-mttcg.c", "g_assert(cpu->halted);")]
# (file, new text): softfloat's test submodules are not fetched
REPLACE = [("tests/fp/meson.build", "# softfloat test submodules are not fetched\n")]
# what the build needs, and the Debian package that has it
TOOLS = {"cc": "build-essential", "ninja": "ninja-build", "pkg-config": "pkg-config"}
LIBRARIES = {"glib-2.0": "libglib2.0-dev", "pixman-1": "libpixman-1-dev",
             "libgcrypt": "libgcrypt20-dev", "slirp": "libslirp-dev"}  # fmt: skip


@dataclass(frozen=True)
class Origin:
    """Where the source comes from: an archive (`url`, checked by `sha256`), else git at the
    pinned commit, from the pinned URLs or the mirrors named here."""

    url: str | None = None
    sha256: str | None = None
    git: str | None = None
    submodules: dict[str, str] = field(default_factory=dict)  # path -> mirror URL


class BuildError(Exception):
    """A build that cannot go on, in one line that says what to do."""


def missing(git: bool) -> list[str]:
    """The Debian packages of what this machine lacks for the build (empty: nothing)."""
    need = {**TOOLS, **({"git": "git"} if git else {})}
    packages = [pkg for tool, pkg in need.items() if shutil.which(tool) is None]
    if shutil.which("pkg-config") is not None:
        packages += [pkg for module, pkg in LIBRARIES.items() if subprocess.run(
            ["pkg-config", "--exists", module], capture_output=True).returncode != 0]  # fmt: skip
    try:
        import ensurepip  # noqa: F401  (Debian splits it out: python3-venv)
    except ImportError:
        packages.append("python3-venv")
    return sorted(set(packages))


def _run(args: list[str], cwd: Path, what: str, log: Path) -> None:
    """One step of the build; its output goes to `log`, whose tail a failure names."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise BuildError(f"{what} failed (exit {done.returncode}): {tail[0][:200]}; "
                         f"the whole output: {log}")  # fmt: skip


def fetch_git(source: Source, dest: Path, log: Path, git: str | None = None,
              submodules: dict[str, str] | None = None) -> None:  # fmt: skip
    """The tree at the pinned commit, and each submodule at the commit the tree records;
    `git` and `submodules` name mirrors."""
    _shallow(git or source.git, source.commit, dest, log)
    for path, url in {**source.submodules, **(submodules or {})}.items():
        entry = subprocess.run(["git", "ls-tree", "HEAD", path], cwd=dest, capture_output=True,
                               text=True).stdout.split()  # fmt: skip
        if len(entry) < 3 or entry[1] != "commit":
            raise BuildError(f"{source.git} at {source.commit[:10]} has no submodule {path}")
        _shallow(url, entry[2], dest / path, log)


def _shallow(url: str, commit: str, dest: Path, log: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["git", "init", "-q"], dest, "git init", log)
    _run(["git", "fetch", "-q", "--depth", "1", url, commit], dest,
         f"fetching {commit[:10]} from {url}", log)  # fmt: skip
    _run(["git", "checkout", "-q", "FETCH_HEAD"], dest, f"checking out {commit[:10]}", log)


def fetch_archive(url: str, sha256: str, dest: Path) -> None:
    """A source archive (.tar.gz or .tar.xz, one top folder, submodules filled in), checked
    by sha256 before anything is unpacked."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    archive = dest.parent / "source.tar"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as reply, open(archive, "wb") as out:
            while chunk := reply.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise BuildError(f"cannot download {url}: {getattr(exc, 'reason', None) or exc}") from None
    if digest.hexdigest() != sha256:
        archive.unlink()
        raise BuildError(f"sha256 mismatch for {url}: expected {sha256}, got "
                         f"{digest.hexdigest()}; nothing was built")  # fmt: skip
    try:
        with tarfile.open(archive) as tar:
            tops = {Path(m.name).parts[0] for m in tar.getmembers() if Path(m.name).parts}
            if len(tops) != 1:
                raise BuildError(f"the source archive at {url} has {len(tops)} top folders, "
                                 "not one: pack the tree under one folder")  # fmt: skip
            extract(tar, dest.parent)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BuildError(f"the source archive at {url} is broken: {exc}") from None
    (dest.parent / tops.pop()).rename(dest)
    archive.unlink()


def extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack `tar` into `dest`, refusing a member that would land outside it: tarfile's
    "data" filter where this Python has it (3.11.4 on; Debian 12's 3.11.2 has not)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for member in tar.getmembers():
        target = (root / member.name).resolve()
        link = (target.parent / member.linkname).resolve() if member.issym() else target
        if member.isdev() or not (target.is_relative_to(root) and link.is_relative_to(root)):
            raise tarfile.TarError(f"{member.name} would land outside the archive's folder")
    tar.extractall(dest)  # every member checked above


def patch(tree: Path) -> None:
    for name, line in DROP_LINES:
        path = tree / name
        text = path.read_text()
        if line not in text:
            raise BuildError(f"{name} has no `{line}`: not the pinned tree")
        path.write_text("".join(x for x in text.splitlines(True) if line not in x))
    for name, text in REPLACE:
        (tree / name).write_text(text)


def build(source: Source, prefix: Path, origin: Origin = Origin()) -> float:
    """Build `source` and install it at `prefix` (…/qemu); return the seconds it took."""
    if origin.url and not origin.sha256:
        raise BuildError("a source archive needs its sha256: a download is only built when "
                         "verified")  # fmt: skip
    lacking = missing(git=origin.url is None)
    if lacking:
        raise BuildError(f"building QEMU needs what this machine lacks: apt-get install "
                         f"{' '.join(lacking)}")  # fmt: skip
    start = time.monotonic()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qemu-build-") as tmp:
        work = Path(tmp)
        log = prefix.parent / f".{prefix.parent.name}-build.log"
        log.write_text(f"building {source.name} {source.commit} into {prefix}\n")
        tree = work / "src"
        if origin.url and origin.sha256:
            fetch_archive(origin.url, origin.sha256, tree)
        else:
            fetch_git(source, tree, log, origin.git, origin.submodules)
        patch(tree)
        venv = work / "meson"
        _run([sys.executable, "-m", "venv", str(venv)], work, "making meson's venv", log)
        _run([str(venv / "bin" / "pip"), "install", "-q", MESON], work, f"pip install {MESON}",
             log)  # fmt: skip
        staged = Path(tempfile.mkdtemp(dir=prefix.parent, prefix=f".{prefix.name}-"))
        staged.chmod(0o755)  # mkdtemp's 0700 would keep other users (docker --user) out
        try:
            out = work / "build"
            out.mkdir()
            meson = f"--meson={venv / 'bin' / 'meson'}"
            _run([str(tree / "configure"), f"--prefix={staged}", meson, *CONFIGURE], out,
                 "configure", log)  # fmt: skip
            _run(["ninja", f"-j{os.cpu_count() or 1}"], out, "the build (ninja)", log)
            _run(["ninja", "install"], out, "ninja install", log)
            built = staged / "bin" / BINARY
            if source.device and not _has_device(built, source.device):
                raise BuildError(f"the build has no {source.device} model: not the pinned "
                                 f"tree? (output: {log})")  # fmt: skip
            os.replace(staged, prefix)  # QEMU's install is relocatable: whole or absent
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    log.unlink()
    return time.monotonic() - start


def _has_device(qemu: Path, device: str) -> bool:
    try:
        out = subprocess.run([str(qemu), "-device", f"{device},help"], capture_output=True,
                             text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return f"{device} options" in out.stdout + out.stderr


def main() -> int:
    """The Dockerfile's build stage: `python qemubuild.py --tools DIR [--url U --sha256 S]`
    installs into DIR/<name>_<commit>/qemu, as `harness qemu install --wifi` does."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", type=Path, required=True, help="the tool's folder")
    ap.add_argument("--url", help="a source archive to build instead of git (needs --sha256)")
    ap.add_argument("--sha256", help="the archive's sha256")
    args = ap.parse_args()
    prefix = args.tools / WIFI.folder / "qemu"
    try:
        seconds = build(WIFI, prefix, Origin(args.url or None, args.sha256 or None))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"built in {seconds / 60:.1f} min: {prefix / 'bin' / BINARY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
