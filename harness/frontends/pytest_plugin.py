"""pytest plugin: scenario files as test items, plus options and fixtures for emulation tests.

Every `*.yaml` in a folder named `scenarios` (or given on the command line) is
collected; each matrix cell is one item, `ota-full-image-into-slot[16mb-v1.25.0]`,
marked `4mb`/`16mb` and `emulation` (markers the plugin registers itself). A
malformed file is a collection error of one `file:line: problem` line. Items run
through the same engine as `harness run` (harness.scenario.runner) and choose firmware
by the same rule (harness.sources.manifest), so pytest-xdist runs them in parallel with nothing
shared but the atomic image cache.

Tests that take the `qemu` fixture, and all scenario items, are emulation tests:
skipped with a reason that says how to get Espressif's QEMU when none is found, run
for real when one is. Only public pytest API is used; the plugin's state lives in
`config.stash`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .. import chips
from ..emulator import device, launch, policy
from ..emulator.device import BootOptions, Device
from ..emulator.qemu import find_qemu, stop_all
from ..errors import HarnessError, QemuNotFound
from ..flash import recipes
from ..flash.size import FlashSize
from ..scenario import format, plan, runner
from ..scenario.results import fault_property
from ..sources import manifest

MARKERS = {
    "emulation": "boots Espressif's QEMU (skipped with a reason when it cannot be found)",
    "stalling_build": "boots a build measured to stall in QEMU (harness.emulator.policy): "
    "where --retries is on, it gets at least policy.STALLING_BUILD_RETRIES",
    "2mb": "runs on a 2MB flash image",
    "4mb": "runs on a 4MB flash image",
    "8mb": "runs on an 8MB flash image",
    "16mb": "runs on a 16MB flash image",
}
RETRIED = pytest.StashKey[dict[str, list[str]]]()
CELLS = pytest.StashKey[list[Path]]()  # the cell folders of this session (for report.html)
REPORT = pytest.StashKey[Path]()
SELECTOR = pytest.StashKey[manifest.FirmwareSelector]()
OPTIONS = pytest.StashKey[plan.RunOptions]()
RETRY_LOG = "esp32-ota-harness-retries"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("esp32-ota-harness")
    group.addoption("--qemu", help="Espressif's qemu-system-xtensa (default: search)")
    group.addoption(
        "--firmware-dir",
        help="folder of firmware files, looked in before the user cache and a download "
        "(default: HARNESS_FIRMWARE_DIR)",
    )
    group.addoption(
        "--flash-size",
        action="append",
        help="run scenario cells of this flash size only (repeatable)",
    )
    group.addoption(
        "--firmware",
        action="append",
        help="firmware for every scenario cell, a file or BOARD[-VARIANT]@VERSION, "
        "replacing the matrix (repeatable)",
    )
    group.addoption(
        "--update",
        action="append",
        help="the release every cell of a matrix with an update axis is updated to, a file "
        "or BOARD[-VARIANT]@VERSION, replacing that axis (repeatable)",
    )
    group.addoption(
        "--artifacts",
        default="artifacts",
        help="folder for per-cell evidence: serial log, timeline, otadata (default: artifacts)",
    )
    group.addoption(
        "--watchdogs",
        choices=["on", "off"],
        help="the emulated timer-group watchdogs for scenario cells that do not say "
        "(default: off, as `idf.py qemu` runs them)",
    )
    group.addoption(
        "--retries",
        type=int,
        default=0,
        help="rerun a scenario cell, or a test that boots QEMU, up to N times when the "
        "emulator failed it (QEMU crashed, a guest watchdog fired, the guest stalled); each "
        "attempt is reported; 0: no retry at all",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    config.stash[RETRIED] = {}
    config.stash[CELLS] = []
    config.stash[SELECTOR] = manifest.selector(config.getoption("firmware_dir"))
    config.stash[OPTIONS] = _run_options(config)
    config.pluginmanager.register(_RetryLog(config), RETRY_LOG)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave nothing behind: no QEMU of this process, no plugin of ours registered."""
    stop_all()
    plugin = config.pluginmanager.get_plugin(RETRY_LOG)
    if plugin is not None:
        config.pluginmanager.unregister(plugin)


def _run_options(config: pytest.Config) -> plan.RunOptions:
    """The run's options, decided once (the options as a user gave them)."""

    def named(option: str) -> tuple[str, ...]:
        given = config.getoption(option) or []
        return tuple(f if manifest.ENTRY_ID.match(f) else str(Path(f).resolve()) for f in given)

    try:
        sizes = tuple(FlashSize.emulated(s) for s in config.getoption("flash_size") or [])
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    return plan.RunOptions(
        flash_sizes=sizes,
        firmware=named("firmware"),
        updates=named("update"),
        watchdogs=policy.on_off(config.getoption("watchdogs")),
        retries=config.getoption("retries"),
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    given = any(Path(a).resolve() == file_path for a in parent.config.args)
    if given or "scenarios" in file_path.parts:
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[ScenarioItem]:
        config = self.config
        try:
            loaded = format.load(self.path)
            cells = plan.cells(loaded, config.stash[SELECTOR], config.stash[OPTIONS])
        except HarnessError as exc:
            raise self.CollectError(str(exc)) from None
        for cell in cells:
            item = ScenarioItem.from_parent(self, name=cell.name, cell=cell)
            item.add_marker(getattr(pytest.mark, str(cell.flash_size).lower()))
            item.add_marker(pytest.mark.emulation)
            yield item


class ScenarioFailed(Exception):
    """A cell's failure; its message is the whole report (no Python traceback)."""


class ScenarioItem(pytest.Item):
    def __init__(self, *, cell: plan.Cell, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cell = cell

    def runtest(self) -> None:
        chip = self.cell.policy.chip if isinstance(self.cell, plan.CellPlan) else chips.DEFAULT
        try:
            qemu = find_qemu(self.config.getoption("qemu"), chip)
        except QemuNotFound as exc:
            pytest.skip(f"emulation test skipped: {exc}")
        artifacts = Path(self.config.getoption("artifacts")).resolve()
        result = runner.run_cell(self.cell, runner.Setup(artifacts, qemu))
        for log in result.serial_logs:
            self.add_report_section(
                "call", "stdout", f"== {log} ==\n{log.read_text('utf-8', 'replace')}"
            )
        self.user_properties += [("artifacts", result.artifacts), ("booted", result.booted),
                                 ("watchdogs", "on" if result.watchdogs else "off")]  # fmt: skip
        if result.image is not None:
            self.user_properties.append(("image", result.image.conversion))
        if result.firmware is not None and not result.firmware.pinned:
            self.user_properties.append(("unpinned_firmware_sha256", result.firmware.sha256))
        self.user_properties += [fault_property(o) for o in result.faults]
        if len(result.attempts) > 1:  # one property per attempt: readable in JUnit and here
            self.user_properties += [("attempt", a.line()) for a in result.attempts]
        if result.status == "skipped":
            pytest.skip(result.message)
        if result.status == "failed":
            raise ScenarioFailed(result.message)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, ScenarioFailed | HarnessError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.cell.scenario.lines.get(("title",), 1) - 1, self.name


class _RetryLog:
    """Collects the attempts of retried cells where results are reported (the xdist
    controller too) and lists them, one line per attempt, in the terminal summary."""

    def __init__(self, config: pytest.Config):
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        attempts = [str(v) for k, v in report.user_properties if k == "attempt"]
        if report.when == "call" and attempts:
            self.config.stash[RETRIED][report.nodeid] = attempts
        cell = [str(v) for k, v in report.user_properties if k == "artifacts"]
        if report.when == "call" and cell and Path(cell[0]) not in self.config.stash[CELLS]:
            self.config.stash[CELLS].append(Path(cell[0]))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """The HTML report of the session's scenario cells, where results come together
        (the xdist controller, or the one process)."""
        cells = self.config.stash[CELLS]
        if cells and not hasattr(self.config, "workerinput"):
            from .html import write_report

            artifacts = Path(self.config.getoption("artifacts")).resolve()
            self.config.stash[REPORT] = write_report(artifacts, cells=cells)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        page = self.config.stash.get(REPORT, None)
        if page is not None:
            terminalreporter.write_line(f"report: {page}")
        retried = self.config.stash[RETRIED]
        if retried:  # never silent: a retry is named here and in the JUnit properties
            why = "QEMU crashed itself, a guest watchdog fired, or the guest stalled"
            terminalreporter.section(f"retried ({why})")
            for nodeid, attempts in retried.items():
                terminalreporter.line(nodeid)
                for attempt in attempts:
                    terminalreporter.line(f"    {attempt}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "qemu" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.emulation)
            _retry_as_the_policy_says(config, item)
    # Scenario cells longest first, so parallel workers finish together instead of one
    # waiting on the other's last long cell; those that need the host to themselves
    # (harness.emulator.hostlock) last, when the other workers are done and the host is quiet
    # (they stall even beside a busy Python process). Other tests keep their places.
    slots = [i for i, item in enumerate(items) if isinstance(item, ScenarioItem)]
    cells = sorted((items[i] for i in slots), key=_scheduling_key)
    for i, item in zip(slots, cells, strict=True):
        items[i] = item


def _retry_as_the_policy_says(config: pytest.Config, item: pytest.Item) -> None:
    """A test that boots QEMU is retried like a scenario cell: on the policy's errors only
    (policy.RETRYABLE, matched by class), as often as --retries and the policy say, through
    pytest-rerunfailures' `flaky` mark; with --retries 0, never."""
    requested = config.getoption("retries")
    if requested <= 0 or not config.pluginmanager.hasplugin("rerunfailures"):
        return
    stalls = item.get_closest_marker("stalling_build") is not None
    count = policy.retry_count(requested, stalls=stalls)
    item.add_marker(pytest.mark.flaky(reruns=count, only_rerun=list(policy.RETRYABLE)))


def _scheduling_key(item: pytest.Item) -> tuple[bool, int]:
    assert isinstance(item, ScenarioItem)
    cell = item.cell
    if isinstance(cell, plan.Skipped):
        return False, 0
    return cell.policy.alone, -cell.cost


@pytest.fixture(scope="session")
def qemu(pytestconfig: pytest.Config) -> Path:
    """The QEMU binary, or a skip that says how to get one."""
    try:
        return find_qemu(pytestconfig.getoption("qemu"))
    except QemuNotFound as exc:
        pytest.skip(f"emulation test skipped: {exc}")


@pytest.fixture(scope="session")
def firmware_selector(pytestconfig: pytest.Config) -> manifest.FirmwareSelector:
    """Where firmware comes from in this run (--firmware-dir, cache, download)."""
    return pytestconfig.stash[SELECTOR]


BoardFactory = Callable[..., Device]


@pytest.fixture
def board(pytestconfig: pytest.Config, qemu: Path, tmp_path: Path) -> Iterator[BoardFactory]:
    """Boot a firmware on an emulated board and hand back its `Device`, at the >>> prompt:

        def test_mine(board):
            dev = board("ESP32_GENERIC-OTA@v1.25.0", "16MB")
            assert dev.running_partition() == "ota_0"

    `firmware`: a manifest entry or a file; `flash_size`: the size's recipe, as a
    scenario's cell gets it; keywords `layout` ("ota" for two OTA slots), `vfs` ({device
    path: host file or folder}) and `watchdogs` (default: the run's --watchdogs, else off).
    It comes through the one path a scenario cell and `harness boot` take
    (harness.emulator.launch): the size's recipe, the run policy. The image is built and
    cached as for scenarios; every board the test booted is powered off and reaped when it
    ends, whatever happened.
    """
    selector = pytestconfig.stash[SELECTOR]
    options = pytestconfig.stash[OPTIONS]
    with contextlib.ExitStack() as stack:

        def boot_board(
            firmware: str | Path,
            flash_size: str = "4MB",
            *,
            layout: str | None = None,
            vfs: dict[str, Path] | None = None,
            watchdogs: bool | None = None,
        ) -> Device:
            chosen = selector.resolve(str(firmware))
            if len(chosen) != 1:
                raise HarnessError(f"board({firmware!r}): no single firmware file by that name")
            choices = launch.Choices(
                flash_size=FlashSize.emulated(flash_size), ota=layout == "ota",
                watchdogs=options.watchdogs if watchdogs is None else watchdogs,
            )  # fmt: skip
            ready = launch.prepare(chosen[0].path, choices, recipes.search_path(Path.cwd()))
            files = tuple((Path(src), dst) for dst, src in (vfs or {}).items())
            image = ready.build(vfs_files=files)
            boot_options = BootOptions(ready.policy, qemu=qemu, artifacts=tmp_path)
            dev = stack.enter_context(device.boot(image, boot_options))
            dev.wait_prompt(60)
            return dev

        yield boot_board
