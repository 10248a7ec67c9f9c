"""`harness qemu install --wifi`: the Wi-Fi QEMU built from its pinned source.

The refusals run in `make test`. The build itself (minutes of C compiling, which would
starve any emulation beside it) runs in `make test-qemu-install`: from the source archive
stand-in of tests/containers.py served on loopback, into a fresh tools folder, and then
a network cell boots on what it built.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from containers import qemu_wifi_source, served, sha256, timed, wifi_source_gits

from harness.emulator.qemu import find_wifi_qemu
from harness.errors import QemuNotFound
from harness.sources import qemubuild

ROOT = Path(__file__).parent.parent
HARNESS = str(Path(sys.executable).parent / "harness")
PREFIX = Path("tools") / "qemu-xtensa-wifi" / qemubuild.WIFI.folder / "qemu"


def _install(tools: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_QEMU_WIFI"}
    env["IDF_TOOLS_PATH"] = str(tools)
    if path is not None:
        env["PATH"] = path
    return subprocess.run([HARNESS, "qemu", "install", "--wifi", *args], capture_output=True,
                          text=True, env=env, timeout=3600)  # fmt: skip


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_machine_without_the_build_tools_is_told_what_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    line = _one_line(_install(tmp_path, path=str(empty)))
    assert "apt-get install build-essential git ninja-build pkg-config" in line, line
    assert not (tmp_path / PREFIX).exists()


def test_a_folder_in_the_way_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / PREFIX).mkdir(parents=True)
    (tmp_path / PREFIX / "keep").write_text("mine")
    line = _one_line(_install(tmp_path))
    assert f"{tmp_path / PREFIX} is there but has no working qemu-system-xtensa" in line
    assert (tmp_path / PREFIX / "keep").read_text() == "mine"


def test_an_installed_wifi_qemu_is_not_built_again(tmp_path: Path) -> None:
    try:
        real = find_wifi_qemu()
    except QemuNotFound as exc:
        pytest.skip(f"no Wi-Fi QEMU on this machine to find again: {exc}")
    (tmp_path / PREFIX).parent.mkdir(parents=True)
    (tmp_path / PREFIX).symlink_to(real.parent.parent)
    result = _install(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"already installed: {tmp_path / PREFIX / 'bin' / real.name}"


def _archive(tops: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for top in tops:
            info = tarfile.TarInfo(f"{top}/configure")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"#!\n"))
    return buf.getvalue()


def test_a_source_archive_is_checked_before_anything_is_unpacked(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "one.tar.gz").write_bytes(one := _archive(["qemu"]))
    (www / "two.tar.gz").write_bytes(two := _archive(["qemu", "other"]))
    with served(www) as url:
        with pytest.raises(qemubuild.BuildError, match=r"sha256 mismatch .* nothing was built"):
            qemubuild.fetch_archive(f"{url}/one.tar.gz", "0" * 64, tmp_path / "a" / "src")
        assert (
            not (tmp_path / "a" / "src").exists() and not (tmp_path / "a" / "source.tar").exists()
        )
        with pytest.raises(qemubuild.BuildError, match="has 2 top folders, not one"):
            qemubuild.fetch_archive(f"{url}/two.tar.gz", sha256(two), tmp_path / "b" / "src")
        qemubuild.fetch_archive(f"{url}/one.tar.gz", sha256(one), tmp_path / "c" / "src")
    assert (tmp_path / "c" / "src" / "configure").read_bytes() == b"#!\n"
    assert not (tmp_path / "c" / "source.tar").exists()


@pytest.mark.parametrize("filtered", [True, False], ids=["data-filter", "before-3.11.4"])
def test_an_archive_member_outside_its_folder_is_refused(
    filtered: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tarfile's data filter, and without it (Debian 12's Python 3.11.2)."""
    if not filtered:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    for name, linkname in (("../evil", ""), ("qemu/link", "/etc/passwd")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            if linkname:
                info.type, info.linkname = tarfile.SYMTYPE, linkname
            tar.addfile(info, io.BytesIO(b""))
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar, pytest.raises(tarfile.TarError):
            qemubuild.extract(tar, tmp_path / "out")
    assert not (tmp_path / "evil").exists()
    buf = io.BytesIO(_archive(["qemu"]))
    with tarfile.open(fileobj=buf) as tar:
        qemubuild.extract(tar, tmp_path / "ok")
    assert (tmp_path / "ok" / "qemu" / "configure").is_file()


def test_a_tree_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "accel/tcg").mkdir(parents=True)
    (tmp_path / "accel/tcg/tcg-accel-ops-mttcg.c").write_text("int main(void) { return 0; }\n")
    with pytest.raises(qemubuild.BuildError, match="not the pinned tree"):
        qemubuild.patch(tmp_path)


def _gits() -> tuple[str, str]:
    try:
        return wifi_source_gits()
    except RuntimeError as exc:
        why = str(exc)
    pytest.fail(why)


@pytest.mark.build
def test_git_gives_the_pinned_tree_and_the_submodule_it_records(tmp_path: Path) -> None:
    qemu_git, keys_git = _gits()
    [path] = qemubuild.WIFI.submodules
    tree = tmp_path / "src"
    qemubuild.fetch_git(qemubuild.WIFI, tree, tmp_path / "log", f"file://{qemu_git}",
                        {path: f"file://{keys_git}"})  # fmt: skip

    def head(folder: Path) -> str:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip

    assert head(tree) == qemubuild.WIFI.commit
    recorded = subprocess.run(["git", "ls-tree", "HEAD", path], cwd=tree, capture_output=True,
                              text=True, check=True).stdout.split()[2]  # fmt: skip
    assert head(tree / path) == recorded
    assert (tree / path / "data" / "keymaps.csv").is_file()


@pytest.mark.build
def test_the_wifi_qemu_builds_from_its_source_and_a_board_downloads_on_it(
    tmp_path: Path, firmware_dir: Path
) -> None:
    _gits()
    archive, what = qemu_wifi_source()
    print(f"\nstand-in for the source: {what} ({len(archive)} bytes, sha256 {sha256(archive)})")
    www = tmp_path / "www"
    www.mkdir()
    (www / "qemu-src.tar.gz").write_bytes(archive)
    with served(www) as url:
        built = timed([HARNESS, "qemu", "install", "--wifi", "--url", f"{url}/qemu-src.tar.gz",
                       "--sha256", sha256(archive)], ROOT,
                      env={**os.environ, "IDF_TOOLS_PATH": str(tmp_path)})  # fmt: skip
    assert built.result.returncode == 0, built.result.stderr[-3000:]
    binary = tmp_path / PREFIX / "bin" / "qemu-system-xtensa"
    assert f"installed: {binary} (built in" in built.result.stdout
    print(f"harness qemu install --wifi: {built.seconds} s\n{built.result.stdout}")
    assert not list((tmp_path / PREFIX).parent.glob(".*")), "leftovers beside the install"
    run = timed([HARNESS, "run", "scenarios/network/ota-full-image-over-http.yaml",
                 "--flash-size", "16MB", "--retries", "1", "--artifacts", str(tmp_path / "art")],
                ROOT, env={**os.environ, "HARNESS_QEMU_WIFI": str(binary),
                           "HARNESS_FIRMWARE_DIR": str(firmware_dir)})  # fmt: skip
    assert run.result.returncode == 0, run.result.stdout[-3000:]
    assert "PASS ota-full-image-over-http[16mb-v1.22.0]" in run.result.stdout
    qemu_line = next((tmp_path / "art").glob("*v1.22.0*/qemu-cmdline.txt")).read_text()
    assert qemu_line.startswith(f"{binary} ")
