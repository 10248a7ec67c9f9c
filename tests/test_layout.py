"""The package's parts import one way: frontends -> scenario -> emulator -> flash (sources
beside flash); nothing below imports from above (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

HARNESS = Path(__file__).parent.parent / "harness"
# what each part may import from the harness (besides itself and the shared modules)
MAY_IMPORT = {
    "flash": set(),
    "sources": {"flash"},
    "emulator": {"flash"},
    "scenario": {"flash", "sources", "emulator"},
    "frontends": {"flash", "sources", "emulator", "scenario"},
}
SHARED = {"chips", "errors", "paths", "yamlfile", "defaults"}


def _imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
            parts.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 2:
            parts.update(alias.name for alias in node.names)
    return parts - SHARED


def test_the_parts_import_one_way() -> None:
    wrong = {}
    for part, allowed in MAY_IMPORT.items():
        for module in sorted((HARNESS / part).glob("*.py")):
            extra = _imported_parts(module) - allowed
            if extra:
                wrong[str(module.relative_to(HARNESS))] = sorted(extra)
    assert not wrong, f"imports that point the wrong way: {wrong}"


def test_every_module_sits_in_a_part() -> None:
    loose = {p.name for p in HARNESS.glob("*.py")} - {
        "__init__.py", "__main__.py", "chips.py", "errors.py", "paths.py", "yamlfile.py"
    }  # fmt: skip
    assert not loose, loose
