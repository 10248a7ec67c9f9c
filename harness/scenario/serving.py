"""A networked cell's HTTP server: the scenario's `serve:` files and its downloads' payload.

One server per attempt (harness.emulator.httpserver), on 127.0.0.1, started before the
board boots and stopped with the attempt, on every path. The board reaches it at
`${http}` (10.0.2.2 and the port); an `ota` step with method download offers its payload
at `${url}` (`UPDATE_PATH`), served as the step's `served:` says. Every request goes
into the attempt's `http.json` (harness.scenario.results.HttpLog) as it ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..emulator.httpserver import HttpServer, Misbehaviour
from ..errors import HarnessError
from ..flash.inputs import read_input
from ..served import Served
from .results import HttpLog
from .stepformats import HttpFault

if TYPE_CHECKING:
    from .plan import CellPlan

UPDATE_PATH = "/update.bin"  # where a download step's payload is served (`${url}`)


def misbehaviour(fault: HttpFault | None) -> Misbehaviour:
    """The scenario's words for a fault (`served:`, a `serve:` file) as the server's."""
    if fault is None:
        return Misbehaviour()
    stall = fault.stall
    return Misbehaviour(
        close_after=fault.close_after, stall_after=stall.after if stall else None,
        stall_s=stall.seconds if stall else 0.0, content_length=fault.content_length,
        not_found=fault.not_found, flip=tuple(fault.flip), rate=fault.rate,
    )  # fmt: skip


def host(plan: CellPlan) -> str:
    """The host's address as the board sees it (the chip's Wi-Fi profile)."""
    wifi = plan.policy.chip.wifi
    if wifi is None:
        raise HarnessError(f"no QEMU emulates the Wi-Fi of {plan.policy.chip.name}")
    return wifi.host


@contextlib.contextmanager
def serve(plan: CellPlan, run_dir: Path, payload: Callable[[str], Path]) -> Iterator[HttpServer]:
    """The cell's server, its `serve:` files in place (`payload` finds a source's file)."""
    files: dict[str, bytes] = {}
    faults: dict[str, Misbehaviour] = {}
    for path, served in (plan.scenario.serve.files if plan.scenario.serve else {}).items():
        source = plan.expand_text(served.source, ("serve", "files", path))
        files[path] = read_input(payload(source))
        faults[path] = misbehaviour(served)
    log = HttpLog(url="")

    def logged(request: Served) -> None:
        log.requests.append(request)
        log.write(run_dir)

    server = HttpServer(files, misbehaviour=faults, on_request=logged)
    log.url = server.url(host(plan))
    with server:
        log.write(run_dir)
        yield server


def offer_update(server: HttpServer, payload: Path, fault: HttpFault | Misbehaviour | None) -> None:
    """Serve a download step's payload at UPDATE_PATH, as `fault` says, from now on."""
    server.add(UPDATE_PATH, read_input(payload))
    how = fault if isinstance(fault, Misbehaviour) else misbehaviour(fault)
    server.misbehave(UPDATE_PATH, how)
