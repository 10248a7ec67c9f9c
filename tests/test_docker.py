"""docker/Dockerfile built for real, with docker or podman, and the 16MB library run inside.

`make test-docker` (not `make test`: a cold build takes minutes). Offline, what cannot be
had is stood in for (tests/containers.py), and each stand-in is printed. The test also
takes the figures bench/README.md quotes: the image's size, a cold and a warm build, and
the library's run time inside against outside, side by side in one run.
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from containers import (
    Engine,
    base_image,
    engine,
    qemu_release_tarball,
    qemu_wifi_source,
    served,
    sha256,
    timed,
    with_runc,
)

from harness import paths

pytestmark = pytest.mark.docker
ROOT = Path(__file__).parent.parent
TAG = "localhost/esp32-ota-harness:docker-test"
# as the nightly: a QEMU crash, or the old builds' emulation stall, is run once more
RETRIES = ["--retries", "1"]
BAD_TAG = "localhost/esp32-ota-harness:docker-test-bad-sha"


@dataclass(frozen=True)
class Built:
    engine: Engine
    base: str
    url: str
    sha256: str
    version: str
    wifi: list[str]  # the Wi-Fi QEMU's source build args
    cold_s: float
    warm_s: float


def _build(eng: Engine, base: str, url: str, sha: str, version: str, tag: str,
           *extra: str) -> list[str]:  # fmt: skip
    return [*eng.build_args(), *extra, "--build-arg", f"BASE={base}", "-f", "docker/Dockerfile",
            "--build-arg", f"QEMU_VERSION={version}", "--build-arg", f"QEMU_URL_AMD64={url}",
            "--build-arg", f"QEMU_SHA256_AMD64={sha}", "-t", tag, "."]  # fmt: skip


def _wifi_source(www: Path) -> tuple[str, str]:
    """(file name, sha256) of the Wi-Fi QEMU's source stand-in, written into `www`."""
    try:
        archive, what = qemu_wifi_source()
    except RuntimeError as exc:
        pytest.fail(f"the image's Wi-Fi QEMU stage needs its source: {exc}")
    (www / "qemu-wifi-src.tar.gz").write_bytes(archive)
    print(f"stand-in for the Wi-Fi QEMU's git source: {what} ({len(archive)} bytes), "
          "served on loopback")  # fmt: skip
    return "qemu-wifi-src.tar.gz", sha256(archive)


@pytest.fixture(scope="module")
def built(qemu: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    eng = engine()
    if eng is None:
        pytest.skip("run it with `make test-docker`, which picks docker (its daemon running) "
                    "or podman (apt-get install podman); DOCKER=podman chooses")  # fmt: skip
    if os.uname().machine != "x86_64":
        pytest.skip("the QEMU stand-in is made for the amd64 build argument")
    work = tmp_path_factory.mktemp("docker")
    base, what = base_image(eng, work)
    print(f"\nengine: {eng.path}\nstand-in for the base image: {what}")
    release = work / "www"
    release.mkdir()
    tarball = qemu_release_tarball(qemu)
    (release / "qemu.tar.xz").write_bytes(tarball)
    version = qemu.parent.parent.parent.name
    print(f"stand-in for Espressif's QEMU release: {qemu} packed in the release's layout "
          f"({len(tarball)} bytes, sha256 {sha256(tarball)}), served on loopback")  # fmt: skip
    source, source_sha = _wifi_source(release)
    with served(release) as base_url:
        url = f"{base_url}/qemu.tar.xz"
        wifi = ["--build-arg", f"QEMU_WIFI_SRC_URL={base_url}/{source}",
                "--build-arg", f"QEMU_WIFI_SRC_SHA256={source_sha}"]  # fmt: skip
        cold = timed(_build(eng, base, url, sha256(tarball), version, TAG, "--no-cache", *wifi),
                     ROOT)  # fmt: skip
        assert cold.result.returncode == 0, cold.result.stdout[-3000:] + cold.result.stderr[-3000:]
        warm = timed(_build(eng, base, url, sha256(tarball), version, TAG, *wifi), ROOT)
        assert warm.result.returncode == 0, warm.result.stderr[-3000:]
        yield Built(eng, base, url, sha256(tarball), version, wifi, cold.seconds, warm.seconds)


def test_the_image_builds_with_its_own_download_checksum_and_qemu_check(built: Built) -> None:
    size = built.engine.run("image", "inspect", "--format", "{{.Size}}", TAG).stdout.strip()
    print(f"image {TAG}: {int(size) / 1e6:.0f} MB; build cold {built.cold_s} s, "
          f"warm {built.warm_s} s")  # fmt: skip
    assert built.engine.has_image(TAG)


def _runner(built: Built) -> tuple[Engine, str | None, str]:
    """(engine, why `run` is refused or None, how it runs): podman's defaults first, then
    tools/containers.conf (runc, explicit ulimits) where they are refused."""
    refused = built.engine.can_run(TAG)
    runc = with_runc(built.engine) if refused else None
    if runc is not None and runc.can_run(TAG) is None:
        return runc, None, (f"{runc.name} run with {runc.conf} (runc, explicit ulimits; with "
                            f"its defaults `run` is refused here: {refused})")  # fmt: skip
    return built.engine, refused, f"{built.engine.name} run"


def _inside(built: Built, firmware: Path, artifacts: Path, work: Path,
            scenarios: str = "/scenarios") -> tuple[float, str]:  # fmt: skip
    """The library at 16MB inside the image: `run` where the engine may, else a build stage.
    The host's emulation lock is mounted in, so a cell that must have the host to itself
    (harness.emulator.hostlock) waits for emulations outside the container too."""
    command = ["run", scenarios, "--flash-size", "16MB", *RETRIES, "--artifacts",
               "/artifacts", "--junit", "/artifacts/junit-16mb.xml"]  # fmt: skip
    locks = paths.user_cache("HARNESS_LOCKS", "locks")
    locks.mkdir(parents=True, exist_ok=True)
    mounts = ["-v", f"{firmware}:/firmware:ro", "-v", f"{artifacts}:/artifacts",
              "-v", f"{locks}:/locks"]  # fmt: skip
    eng, refused, how = _runner(built)
    if refused is None:
        args = [eng.path, "run", "--rm", *mounts, "-e", "HARNESS_LOCKS=/locks", TAG, *command]
    else:
        (work / "Containerfile").write_text(
            f"FROM {TAG}\nRUN HARNESS_LOCKS=/locks harness {' '.join(command)} || true\n"
        )  # the JUnit file says how it went; the build need not fail for it to be read
        no_cache = "--layers=false" if built.engine.name == "podman" else "--no-cache"
        args = [*built.engine.build_args(), *mounts, no_cache, "-f", str(work / "Containerfile"),
                str(work)]  # fmt: skip
        how = f"a build stage FROM the image ({built.engine.name} run is refused here: {refused})"
    inside = timed(args, work, env=eng.environ())
    assert inside.result.returncode == 0, _failures(inside.result.stdout) + inside.result.stderr
    return inside.seconds, how


def _failures(output: str) -> str:
    """Each FAIL line of `harness run` with the line that says why."""
    lines = output.splitlines()
    return "\n".join(f"{line}\n{lines[i + 1] if i + 1 < len(lines) else ''}"
                     for i, line in enumerate(lines) if line.startswith("FAIL "))  # fmt: skip


def _junit(path: Path) -> tuple[int, int, int]:
    suite = ET.parse(path).getroot()
    return int(suite.get("tests", 0)), int(suite.get("failures", 0)), int(suite.get("skipped", 0))


@getattr(pytest.mark, "16mb")
def test_the_16mb_library_passes_inside_the_image(
    built: Built, firmware_dir: Path, qemu: Path, tmp_path: Path
) -> None:
    artifacts = tmp_path / "inside"
    artifacts.mkdir()
    artifacts.chmod(0o777)
    seconds, how = _inside(built, firmware_dir, artifacts, tmp_path)
    print(f"running inside: {how}")
    tests, failures, skipped = _junit(artifacts / "junit-16mb.xml")
    assert tests > 10 and failures == 0, (tests, failures, skipped)
    harness = str(Path(sys.executable).parent / "harness")
    outside = timed([harness, "run", str(ROOT / "scenarios"), "--flash-size", "16MB",
                     *RETRIES, "--qemu", str(qemu), "--artifacts", str(tmp_path / "outside"),
                     "--junit", str(tmp_path / "outside.xml")], ROOT)  # fmt: skip
    assert outside.result.returncode == 0, _failures(outside.result.stdout)
    assert _junit(tmp_path / "outside.xml")[:2] == (tests, 0)
    print(f"the 16MB library: {tests} cells, {skipped} skipped, inside {seconds} s, "
          f"outside {outside.seconds} s")  # fmt: skip


def test_a_wrong_qemu_checksum_fails_the_build_and_tags_nothing(built: Built) -> None:
    wrong = "0" * 64
    result = timed(_build(built.engine, built.base, built.url, wrong, built.version, BAD_TAG,
                          *built.wifi), ROOT).result  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "/tmp/qemu.tar.xz: FAILED" in output, output[-3000:]
    assert "sha256sum: WARNING: 1 computed checksum did NOT match" in output
    assert not built.engine.has_image(BAD_TAG)


def test_the_image_has_both_qemus_and_a_board_downloads_its_update_inside(
    built: Built, firmware_dir: Path, tmp_path: Path
) -> None:
    """Espressif's release for every cell, the Wi-Fi QEMU for the network's: the starting
    report over HTTP, served and downloaded inside the container (QEMU's user networking
    reaches the container's own 127.0.0.1)."""
    artifacts = tmp_path / "inside"
    artifacts.mkdir()
    artifacts.chmod(0o777)
    scenario = "/scenarios/network/ota-full-image-over-http.yaml"
    seconds, how = _inside(built, firmware_dir, artifacts, tmp_path, scenario)
    print(f"running inside: {how}")
    tests, failures, skipped = _junit(artifacts / "junit-16mb.xml")
    assert failures == 0 and tests - skipped >= 1, (tests, failures, skipped)
    lines = {p.parent.name: p.read_text() for p in artifacts.glob("*/qemu-cmdline.txt")}
    network = [name for name, line in lines.items() if "model=misc.esp32_wifi" in line]
    assert network and all("/tools/qemu-xtensa-wifi/" in lines[n] for n in network), lines
    print(f"the network cells inside: {tests} cells, {skipped} skipped, {seconds} s; "
          f"on the Wi-Fi QEMU: {', '.join(sorted(network))}")  # fmt: skip
