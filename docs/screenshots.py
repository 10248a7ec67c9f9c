"""The README's pictures of the HTML report, taken from a real run's page.

    make test-16mb && .venv/bin/python docs/screenshots.py artifacts/report.html

takes the overview and the starting report's cell at 16MB (ota-full-image-into-slot
on v1.25.0) in Debian's headless Chromium, into docs/img/.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CELL = "ota-full-image-into-slot[16mb-v1.25.0]"
OUT = Path(__file__).parent / "img"


def main(page_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 760}, device_scale_factor=1)
        page.goto(page_path.resolve().as_uri())
        page.screenshot(path=str(OUT / "report-overview.png"))
        page.locator(f'section.cellpage[data-name="{CELL}"]').screenshot(
            path=str(OUT / "report-cell.png")
        )
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "artifacts/report.html"))
