"""pytest plugin: scenario files as test items, plus options and fixtures for emulation tests.

Every `*.yaml` in a folder named `scenarios` (or given on the command line) is
collected; each matrix cell is one item, `ota-full-image-into-slot[16mb-v1.25.0]`,
marked `4mb`/`16mb` and `emulation`. A malformed file is a collection error of one
`file:line: problem` line. Items run through the same engine as `harness run`
(harness.runner), so pytest-xdist runs them in parallel with nothing shared but
the atomic image cache.

Tests that take the `qemu` fixture, and all scenario items, are emulation tests:
skipped with a reason that says how to get Espressif's QEMU when none is found, run
for real when one is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest.runner import runtestprotocol

from . import runner, scenario
from .errors import HarnessError, QemuNotFound
from .qemu import find_qemu


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("esp32-ota-harness")
    group.addoption("--qemu", help="Espressif's qemu-system-xtensa (default: search)")
    group.addoption(
        "--firmware-dir",
        help="folder of official MicroPython ESP32 firmware "
        "(default: HARNESS_FIRMWARE_DIR, else ../shared/firmware, else the fetch cache)",
    )
    group.addoption(
        "--flash-size",
        action="append",
        help="run scenario cells of this flash size only (repeatable)",
    )
    group.addoption(
        "--firmware",
        action="append",
        help="firmware file for every scenario cell, replacing the matrix (repeatable)",
    )
    group.addoption(
        "--artifacts",
        default="artifacts",
        help="folder for per-cell evidence: serial log, timeline, otadata (default: artifacts)",
    )
    group.addoption(
        "--retries",
        type=int,
        default=0,
        help="rerun a scenario cell whose QEMU crashed itself, up to N times (reported)",
    )


def _firmware_dir(config: pytest.Config) -> Path:
    given = config.getoption("firmware_dir") or os.environ.get("HARNESS_FIRMWARE_DIR")
    if given:
        return Path(given)
    shared = Path(config.rootpath).parent / "shared" / "firmware"
    return shared if shared.is_dir() else scenario.default_firmware_dir()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    given = any(Path(a).resolve() == file_path for a in parent.config.args)
    if given or "scenarios" in file_path.parts:
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[ScenarioItem]:
        try:
            loaded = scenario.load(self.path)
            firmware = self.config.getoption("firmware")
            cells = loaded.cells(
                _firmware_dir(self.config),
                flash_sizes=self.config.getoption("flash_size"),
                firmware=[str(Path(f).resolve()) for f in firmware] if firmware else None,
            )
        except HarnessError as exc:
            raise self.CollectError(str(exc)) from None
        for cell in cells:
            item = ScenarioItem.from_parent(self, name=f"{loaded.name}[{cell.id}]", cell=cell)
            item.add_marker(getattr(pytest.mark, cell.flash_size.lower()))
            item.add_marker(pytest.mark.emulation)
            yield item


class ScenarioFailed(Exception):
    """A cell's failure; its message is the whole report (no Python traceback)."""


class ScenarioItem(pytest.Item):
    def __init__(self, *, cell: scenario.Cell, **kwargs: Any):
        super().__init__(**kwargs)
        self.cell = cell

    def runtest(self) -> None:
        try:
            qemu = find_qemu(self.config.getoption("qemu"))
        except QemuNotFound as exc:
            pytest.skip(f"emulation test skipped: {exc}")
        result = runner.run_cell(
            self.cell,
            artifacts=Path(self.config.getoption("artifacts")).resolve(),
            qemu=qemu,
            retries=self.config.getoption("retries"),
        )
        for log in result.serial_logs:
            self.add_report_section(
                "call", "stdout", f"== {log} ==\n{log.read_text('utf-8', 'replace')}"
            )
        self.user_properties += [("artifacts", result.artifacts), ("booted", result.booted)]
        if len(result.attempts) > 1:
            self.user_properties.append(("attempts", result.attempts))
        if result.status == "skipped":
            pytest.skip(result.message)
        if result.status == "failed":
            raise ScenarioFailed(result.message)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, ScenarioFailed | HarnessError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.cell.scenario.lines.get(("title",), 1) - 1, self.name


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Runs where results are reported (the xdist controller too), so retries are seen."""
    if report.when == "call" and any(key == "attempts" for key, _ in report.user_properties):
        _retried_reports.append(f"{report.nodeid}: {dict(report.user_properties)['attempts']}")


_retried_reports: list[str] = []


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    retried = _retried_reports
    if retried:  # never silent: a retry is named in the summary and the JUnit properties
        terminalreporter.section("retried (QEMU crashed itself, or a guest watchdog fired)")
        for nodeid in retried:
            terminalreporter.line(nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep the exception of a failed call, for the retry policy below."""
    yield
    if call.when == "call" and call.excinfo is not None:
        item.stash[_ERROR] = call.excinfo.value


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """--retries for emulation tests too: the policy of harness.runner, reported, never silent.

    Scenario items retry inside the runner; other tests that boot QEMU are rerun here when
    they failed for a reason the policy allows (QEMU's own crash, watchdog resets).
    """
    retries = item.config.getoption("retries") or 0
    if (
        not retries
        or isinstance(item, ScenarioItem)
        or "qemu" not in getattr(item, "fixturenames", ())
    ):
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for attempt in range(retries + 1):
        item.stash[_ERROR] = None
        if attempt and hasattr(item, "_initrequest"):
            item._initrequest()  # fresh fixtures for the new attempt
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        error = item.stash.get(_ERROR, None)
        if attempt < retries and error is not None and runner.retryable(error):
            _retried_reports.append(f"{item.nodeid}: attempt {attempt + 1} failed: {error}")
            continue
        for report in reports:
            if attempt:  # on the report itself, so the xdist controller sees it too
                report.user_properties.append(("attempts", attempt + 1))
            item.ihook.pytest_runtest_logreport(report=report)
        break
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


_ERROR = pytest.StashKey[BaseException | None]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "qemu" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.emulation)


@pytest.fixture(scope="session")
def qemu(pytestconfig: pytest.Config) -> Path:
    """The QEMU binary, or a skip that says how to get one."""
    try:
        return find_qemu(pytestconfig.getoption("qemu"))
    except QemuNotFound as exc:
        pytest.skip(f"emulation test skipped: {exc}")


@pytest.fixture(scope="session")
def firmware_dir(pytestconfig: pytest.Config) -> Path:
    """The folder of real firmware files (read only; never copied into the project)."""
    path = _firmware_dir(pytestconfig)
    if not path.is_dir():
        pytest.skip(f"no firmware folder at {path}: set HARNESS_FIRMWARE_DIR or --firmware-dir")
    return path
