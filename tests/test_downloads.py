"""`harness qemu install` and `harness firmware fetch` against a real HTTP server on loopback.

The server is started by each test and serves files the test builds; nothing beyond
127.0.0.1 is contacted.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.sources import downloads


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def harness(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})  # fmt: skip


def qemu_archive() -> bytes:
    """A release-shaped archive: qemu/bin/qemu-system-xtensa and a ROM beside it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data, mode in [
            ("qemu/bin/qemu-system-xtensa", b"#!/bin/sh\necho esp32\n", 0o755),
            ("qemu/share/qemu/esp32-v3-rom.bin", b"\0" * 1024, 0o644),
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def one_line_error(run: subprocess.CompletedProcess[str], *words: str) -> None:
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert run.stderr.startswith("error: ")
    for word in words:
        assert word in run.stderr


def test_qemu_install_verifies_installs_and_is_then_a_no_op(server, tmp_path: Path) -> None:
    url, root = server
    archive = qemu_archive()
    (root / "qemu.tar.xz").write_bytes(archive)
    env = {"IDF_TOOLS_PATH": str(tmp_path / "idf")}
    args = ["qemu", "install", "--url", f"{url}/qemu.tar.xz",
            "--sha256", hashlib.sha256(archive).hexdigest()]  # fmt: skip
    first = harness(*args, env=env)
    assert first.returncode == 0, first.stderr
    binary = (tmp_path / "idf/tools/qemu-xtensa" / downloads.QEMU_VERSION
              / "qemu/bin/qemu-system-xtensa")  # fmt: skip
    assert first.stdout.strip() == f"installed: {binary}"
    assert os.access(binary, os.X_OK)
    assert (binary.parent.parent / "share/qemu/esp32-v3-rom.bin").is_file()
    (root / "qemu.tar.xz").unlink()  # the second run must not even need the server
    again = harness(*args, env=env)
    assert again.returncode == 0 and again.stdout.strip() == f"already installed: {binary}"
    assert sorted(p.name for p in binary.parents[3].iterdir()) == [downloads.QEMU_VERSION]


def test_qemu_install_checksum_mismatch_installs_nothing(server, tmp_path: Path) -> None:
    url, root = server
    (root / "qemu.tar.xz").write_bytes(qemu_archive())
    env = {"IDF_TOOLS_PATH": str(tmp_path / "idf")}
    run = harness("qemu", "install", "--url", f"{url}/qemu.tar.xz", "--sha256", "0" * 64, env=env)
    one_line_error(run, "sha256 mismatch", "nothing was installed")
    tools = tmp_path / "idf/tools/qemu-xtensa"
    assert not tools.exists() or list(tools.iterdir()) == []


def test_qemu_install_offline_installs_nothing(tmp_path: Path) -> None:
    env = {"IDF_TOOLS_PATH": str(tmp_path / "idf")}
    run = harness("qemu", "install", "--url", f"{closed_port_url()}/q.tar.xz",
                  "--sha256", "0" * 64, env=env)  # fmt: skip
    one_line_error(run, "cannot download", "offline?")
    tools = tmp_path / "idf/tools/qemu-xtensa"
    assert not tools.exists() or list(tools.iterdir()) == []


def test_qemu_install_url_without_sha256_is_refused(tmp_path: Path) -> None:
    run = harness("qemu", "install", "--url", "http://127.0.0.1:9/q.tar.xz",
                  env={"IDF_TOOLS_PATH": str(tmp_path)})  # fmt: skip
    one_line_error(run, "--url needs --sha256")


def test_pinned_release_is_the_one_esp_idf_recommends() -> None:
    asset = downloads.qemu_asset(downloads.QEMU_VERSION, "x86_64")
    assert downloads.QEMU_VERSION == "esp_develop_9.2.2_20260417"
    assert asset.url.endswith(
        "esp-develop-9.2.2-20260417/"
        "qemu-xtensa-softmmu-esp_develop_9.2.2_20260417-x86_64-linux-gnu.tar.xz"
    )
    assert asset.sha256 == "0eecb2a34a5586c0e59110f77b9343b7b336e82fdb0e1a30e1dc1bab8a547e35"
    assert asset.size == 15619396


FW_NAME = "ESP32_GENERIC-OTA-20250415-v1.25.0.bin"


def serve_firmware(root: Path, data: bytes, name: str = FW_NAME) -> None:
    page = root / "download" / "ESP32_GENERIC"
    page.mkdir(parents=True)
    (page / "index.html").write_text(
        f'<a href="/resources/firmware/{name}">{name}</a>\n'
        '<a href="/resources/firmware/ESP32_GENERIC-20250415-v1.25.0.bin">plain</a>\n'
    )
    (root / "resources" / "firmware").mkdir(parents=True)
    (root / "resources" / "firmware" / name).write_bytes(data)


def test_firmware_fetch_downloads_records_checksum_and_then_works_offline(
    server, tmp_path: Path, fw
) -> None:
    url, root = server
    data = fw("OTA-20250415-v1.25.0").read_bytes()
    serve_firmware(root, data)
    cache = tmp_path / "cache"
    args = ["firmware", "fetch", "ESP32_GENERIC-OTA", "v1.25.0", "--cache", str(cache)]
    run = harness(*args, "--base-url", url, env={})
    assert run.returncode == 0, run.stderr
    path = cache / FW_NAME
    assert run.stdout.strip() == str(path)
    assert path.read_bytes() == data
    sums = (cache / "checksums.json").read_text()
    assert hashlib.sha256(data).hexdigest() in sums
    offline = harness(*args, "--base-url", closed_port_url(), env={})
    assert offline.returncode == 0 and offline.stdout.strip() == str(path)
    path.write_bytes(data[:-1] + b"\0")  # the cached file changed behind our back
    one_line_error(harness(*args, env={}), "changed since it was downloaded")


def test_firmware_fetch_unknown_version_and_offline(server, tmp_path: Path, fw) -> None:
    url, root = server
    serve_firmware(root, fw("OTA-20250415-v1.25.0").read_bytes())
    cache = tmp_path / "cache"
    run = harness("firmware", "fetch", "ESP32_GENERIC-OTA", "v9.9.9", "--cache", str(cache),
                  "--base-url", url, env={})  # fmt: skip
    one_line_error(run, "lists no ESP32_GENERIC-OTA firmware v9.9.9")
    run = harness("firmware", "fetch", "ESP32_GENERIC-OTA", "v1.24.1", "--cache", str(cache),
                  "--base-url", closed_port_url(), env={})  # fmt: skip
    one_line_error(run, "cannot read", "offline?")  # unpinned: the download page is read
    run = harness("firmware", "fetch", "ESP32_GENERIC-OTA", "v1.25.0", "--cache", str(cache),
                  "--base-url", closed_port_url(), env={})  # fmt: skip
    one_line_error(run, "cannot download", "offline?")  # pinned: the file itself
    assert not cache.exists() or not list(cache.glob("*.bin"))


def test_firmware_fetch_refuses_what_is_not_firmware(server, tmp_path: Path) -> None:
    url, root = server
    serve_firmware(root, b"<html>rate limited</html>")
    cache = tmp_path / "cache"
    run = harness("firmware", "fetch", "ESP32_GENERIC-OTA", "1.25.0", "--cache", str(cache),
                  "--base-url", url, env={})  # fmt: skip
    one_line_error(run, "not an ESP32 firmware image; not kept")
    assert not list(cache.glob("*.bin"))


def _serve_releases(root: Path, versions: list[str]) -> None:
    page = root / "download" / "ESP32_GENERIC"
    page.mkdir(parents=True, exist_ok=True)
    links = [f'<a href="/resources/firmware/ESP32_GENERIC-20260101-{v}.bin">{v}</a>'
             for v in versions]  # fmt: skip
    links.append('<a href="/resources/firmware/ESP32_GENERIC-20261130-v1.31.0-preview.12.g1.bin">')
    (page / "index.html").write_text("\n".join(links) + "\n")


def test_firmware_list_shows_the_newest_release_and_checks_for_a_newer_one(
    server, tmp_path: Path
) -> None:
    url, root = server
    listing = harness("firmware", "list", env={})
    assert listing.returncode == 0
    assert "ESP32_GENERIC@v1.29.0        ESP32_GENERIC-20260824-v1.29.0.bin" in listing.stdout
    _serve_releases(root, ["v1.28.0", "v1.29.0"])
    run = harness("firmware", "list", "--check-latest", "--base-url", url, env={})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1].startswith("latest release: the manifest is current")
    _serve_releases(root, ["v1.28.0", "v1.29.0", "v1.30.0"])  # a preview is not a release
    run = harness("firmware", "list", "--check-latest", "--base-url", url, env={})
    assert run.returncode == 1
    last = run.stdout.splitlines()[-1]
    assert "v1.30.0 on" in last and "newer than the manifest (v1.29.0)" in last, last
    assert "preview" not in last
    offline = harness("firmware", "list", "--check-latest", "--base-url", closed_port_url(),
                      env={})  # fmt: skip
    assert offline.returncode == 0
    assert offline.stdout.splitlines()[-1].startswith("latest release: could not check (cannot")


def test_firmware_from_a_mirror_folder_is_checked_against_its_pin(
    server, tmp_path: Path, fw
) -> None:
    """HARNESS_FIRMWARE_MIRROR: a plain folder of the official files (a company mirror);
    the pinned sha256 still decides, and a file that differs is refused in one line."""
    url, root = server
    (root / FW_NAME).write_bytes(fw("OTA-20250415-v1.25.0").read_bytes())
    cache = tmp_path / "cache"
    args = ["firmware", "fetch", "ESP32_GENERIC-OTA@v1.25.0", "--cache", str(cache)]
    run = harness(*args, env={"HARNESS_FIRMWARE_MIRROR": f"{url}/"})
    assert run.returncode == 0, run.stderr
    assert (cache / FW_NAME).read_bytes() == (root / FW_NAME).read_bytes()
    (root / FW_NAME).write_bytes(fw("OTA-20231227-v1.22.0").read_bytes())  # a real image, not it
    other = tmp_path / "other"
    run = harness(*args[:-1], str(other), env={"HARNESS_FIRMWARE_MIRROR": url})
    one_line_error(run, f"sha256 mismatch for {url}/{FW_NAME}", "(pinned)", "not kept")
    assert not list(other.glob("*.bin"))


def test_an_unpinned_release_is_found_in_the_mirrors_folder_listing(
    server, tmp_path: Path, fw
) -> None:
    url, root = server
    name = "ESP32_GENERIC-OTA-20250101-v1.24.1.bin"  # v1.24.1 OTA: not pinned in the manifest
    (root / name).write_bytes(fw("OTA-20250415-v1.25.0").read_bytes())
    cache = tmp_path / "cache"
    env = {"HARNESS_FIRMWARE_MIRROR": url}
    run = harness("firmware", "fetch", "ESP32_GENERIC-OTA@v1.24.1", "--cache", str(cache), env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(cache / name)
    assert name in (cache / "checksums.json").read_text()  # recorded on first download
    run = harness("firmware", "fetch", "ESP32_GENERIC-OTA@v1.26.0", "--cache", str(cache), env=env)
    one_line_error(run, f"{url}/ lists no ESP32_GENERIC-OTA firmware v1.26.0")
    bad = harness("firmware", "fetch", "ESP32_GENERIC-OTA@v1.26.0", "--cache", str(cache),
                  env={"HARNESS_FIRMWARE_MIRROR": "mirror.example/firmware"})  # fmt: skip
    one_line_error(bad, "HARNESS_FIRMWARE_MIRROR='mirror.example/firmware' is not an http(s)://")


def test_the_nightly_list_narrows_to_the_releases_asked_for() -> None:
    run = harness("firmware", "list", "--nightly", "--json", "--only", "v1.28.0, 1.22.0", env={})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == '["ESP32_GENERIC-OTA@v1.22.0", "ESP32_GENERIC-OTA@v1.28.0"]'
    every = harness("firmware", "list", "--nightly", "--json", "--only", "", env={})
    assert every.stdout == harness("firmware", "list", "--nightly", "--json", env={}).stdout
    one_line_error(harness("firmware", "list", "--nightly", "--only", "v9.9.9", env={}),
                   "'v9.9.9' names none of the releases listed")  # fmt: skip
