"""One request the host's HTTP server answered (harness.emulator.httpserver): a record of
the run that the results (harness.scenario.results) keep, kept apart so that reading a
scenario or a result loads no server or emulator code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Served:
    """One request, as the server saw it: the board's side of a download."""

    method: str
    path: str
    status: int
    length: int  # the file's (or page's) real length
    declared: int | None  # the Content-Length header sent
    sent: int  # body bytes that went out
    outcome: str  # complete, closed after N bytes (asked), the client went away, ...
    start_s: float  # since the server started (or the serial log, harness.scenario.serving)
    elapsed_s: float
    client: str = ""
    fault: str = ""  # Misbehaviour.describe()
