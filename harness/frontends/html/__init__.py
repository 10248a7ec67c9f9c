"""One self-contained HTML page per run: the matrix at a glance, and per cell the flash
before and after (drawn to scale), the booted slot, otadata, the steps and the serial log.

`write_report(artifacts)` reads any artifacts folder (`harness run`'s, the pytest
plugin's, several CI jobs' merged) and writes `report.html` in it; `write_inspect`
draws one file for a bug report. The page needs no network: its CSS, script and
drawings are inline (Jinja2 templates in `templates/`, laid out from `views`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jinja2

from ...flash.inspect import examine
from . import inspect_view, views

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("harness.frontends.html", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"], default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=False,
)


def write_report(artifacts: Path, out: Path | None = None, title: str = "",
                 cells: Sequence[Path] | None = None) -> Path:  # fmt: skip
    """Render the cells under `artifacts` (`cells`: these cell folders only, this run's)
    into `out` (default: artifacts/report.html)."""
    page = out or artifacts / "report.html"
    view = views.load(artifacts, page, title, cells)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(_ENV.get_template("report.html.j2").render(r=view), encoding="utf-8")
    return page


def write_inspect(file: Path, out: Path) -> Path:
    """The partition map and the verdict of one file (harness inspect --html)."""
    view = inspect_view.of(file, examine(file))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_ENV.get_template("inspect.html.j2").render(v=view), encoding="utf-8")
    return out
