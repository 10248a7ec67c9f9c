"""Results of scenario cells for people and for CI: a line per cell, JUnit XML, progress.

`harness run` uses all three; the pytest plugin leaves JUnit to pytest's own
`--junitxml` and adds the serial log to each test's captured output instead.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from ..emulator.console import strip_ansi
from ..scenario.plan import CellPlan
from ..scenario.results import (
    CellResult,
    by_step,
    fault_property,
    fault_summary,
    iter_cells,
    verdict_counts,
)

MAX_LOG = 2_000_000  # characters of serial log per test case in the XML
NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # XML 1.0 forbids these


def line(result: CellResult) -> str:
    """`PASS name  12.3s  booted ota_0`, or FAIL/SKIP with the reason."""
    word = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[result.status]
    text = f"{word} {result.name}  {result.elapsed_s:.1f}s"
    if result.booted:
        text += f"  booted {result.booted}"
    if len(result.attempts) > 1:
        text += f"  (after {len(result.attempts)} attempts)"
    if result.status != "passed":
        text += f"\n  {result.message}"
    if result.faults:
        text += "\n  " + fault_summary(result.faults)
    return text


def summary(results: list[CellResult], elapsed: float) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped")}
    retried = sum(len(r.attempts) > 1 for r in results)
    text = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s == "passed")
    if retried:
        text += f", {retried} retried (see --retries)"
    return f"{text} in {elapsed:.1f}s"


def markdown(artifacts: Path) -> str:
    """A table of every cell under `artifacts` (at any depth: several CI jobs' artifacts
    merged), for CI summaries; the same cells the HTML report shows.

    Firmware that is not pinned by sha256 in the manifest is listed under the table,
    with the sha256 it ran with, so an unpinned release never goes unnoticed.
    """
    results = list(iter_cells(artifacts))
    if not results:
        return f"no results under {artifacts}"
    rows = ["| scenario | cell | result | booted | time |", "|---|---|---|---|---|"]
    for result in results:
        mark = {"passed": "pass", "failed": "**FAIL**", "skipped": "skip"}.get(result.status, "?")
        tries = f" ({len(result.attempts)} attempts)" if len(result.attempts) > 1 else ""
        rows.append(f"| {result.cell.scenario} | {result.cell.id} | {mark}{tries} | "
                    f"{result.booted or ''} | {result.elapsed_s:.1f} s |")  # fmt: skip
    notes = coverage_lines(results) + unpinned_lines(results)
    judged = verdict_lines(results)
    return "\n".join([*rows, *(["", *judged] if judged else []), *(["", *notes] if notes else [])])


def verdict_lines(results: list[CellResult]) -> list[str]:
    """Per fault step, its points by what the board ran, judged from its flash and its
    MMU, not asked of the firmware."""
    lines = [
        f"- {result.name} step {step} `{kind}`, {len(mine)} point{'s' * (len(mine) != 1)}: "
        f"{verdict_counts(mine)}"
        for result in results
        for (step, kind), mine in by_step(result.faults).items()
    ]
    head = "Fault points by verdict (from the flash and the MMU, not asked of the firmware):"
    return [head, *lines] if lines else []


def coverage_lines(results: list[CellResult]) -> list[str]:
    """What each fault step's points cover, one line each (`sweep: all`: every state)."""
    return [f"{result.name} step {step} `{kind}`: {mine[0].coverage}"
            for result in results for (step, kind), mine in by_step(result.faults).items()
            if mine[0].coverage]  # fmt: skip


def unpinned_lines(results: list[CellResult]) -> list[str]:
    """One line per firmware that ran without a pinned sha256."""
    seen = {}
    for result in results:
        fw = result.firmware
        if fw is not None and not fw.pinned:
            seen[fw.entry or fw.path] = fw.sha256
    return [
        f"unpinned firmware: {name} ran with sha256 {digest} (recorded on first "
        "download; pin it in images/firmware.yaml)"
        for name, digest in sorted(seen.items())
    ]


def junit(results: list[CellResult], path: Path) -> None:
    """JUnit XML: one testcase per cell, the serial log in system-out."""
    suite = ET.Element(
        "testsuite",
        name="esp32-ota-harness",
        tests=str(len(results)),
        failures=str(sum(r.status == "failed" for r in results)),
        skipped=str(sum(r.status == "skipped" for r in results)),
        time=f"{sum(r.elapsed_s for r in results):.3f}",
    )
    for result in results:
        case = ET.SubElement(
            suite, "testcase", classname=result.cell.scenario, name=result.name,
            time=f"{result.elapsed_s:.3f}",
        )  # fmt: skip
        if result.status == "failed":
            failure = ET.SubElement(
                case, "failure", message=_xml_text(result.message.splitlines()[0])
            )
            failure.text = _xml_text(result.message)
        elif result.status == "skipped":
            ET.SubElement(case, "skipped", message=result.message)
        props = ET.SubElement(case, "properties")
        ET.SubElement(props, "property", name="artifacts", value=result.artifacts)
        if result.booted:
            ET.SubElement(props, "property", name="booted", value=result.booted)
        ET.SubElement(props, "property", name="attempts", value=str(len(result.attempts)))
        for outcome in result.faults:
            name, value = fault_property(outcome)
            ET.SubElement(props, "property", name=name, value=value)
        if result.firmware is not None:
            ET.SubElement(props, "property", name="firmware_sha256", value=result.firmware.sha256)
        logs = [f"== {p} ==\n{p.read_text(errors='replace')}" for p in result.serial_logs]
        if logs:
            ET.SubElement(case, "system-out").text = _xml_text("\n".join(logs)[-MAX_LOG:])
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def _xml_text(text: str) -> str:
    """Serial logs hold colour codes and REPL control bytes that XML 1.0 cannot carry."""
    return NOT_XML.sub("", strip_ansi(text))


class Progress:
    """A live status line on a terminal: cell, current step, elapsed seconds."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.stream = total, stream
        self.live = stream.isatty()
        self.done = 0
        self.text = ""
        self.since = time.monotonic()
        self._lock = threading.Lock()

    def step(self, cell: CellPlan, index: int, kind: str) -> None:
        with self._lock:
            if index == 0:
                self.since = time.monotonic()
            count = len(cell.scenario.steps)
            self.text = (
                f"[{self.done + 1}/{self.total}] {cell.name}: step {index + 1}/{count} {kind}"
            )

    def result(self, result: CellResult) -> None:
        with self._lock:
            self.done += 1
            self._clear()
            print(line(result), flush=True)

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    @contextmanager
    def running(self) -> Iterator[None]:
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                with self._lock:
                    if self.text:
                        elapsed = time.monotonic() - self.since
                        self.stream.write(f"\r\x1b[K{self.text}  {elapsed:.0f}s")
                        self.stream.flush()

        thread = threading.Thread(target=tick, daemon=True)
        if self.live:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if self.live:
                thread.join()
                self._clear()
