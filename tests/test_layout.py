"""The package's parts import one way: frontends -> scenario -> emulator -> flash (sources
beside flash); nothing below imports from above (docs/architecture.md).

Every module at any depth is read (its syntax tree: relative, absolute and function-level
imports alike), so `frontends/html/` and whatever folder comes next are checked too.
"""

from __future__ import annotations

import ast
from pathlib import Path

HARNESS = Path(__file__).parent.parent / "harness"
# what each part may import from the harness, besides itself and the shared modules
MAY_IMPORT = {
    "flash": set(),
    "sources": {"flash"},
    "emulator": {"flash"},
    "scenario": {"flash", "sources", "emulator"},
    "frontends": {"flash", "sources", "emulator", "scenario"},
}
# below every part; import no part
SHARED = {"chips", "errors", "paths", "yamlfile", "defaults", "served"}
ENTRY = {"__main__": {"frontends"}, "__init__": set()}  # `python -m harness` starts the CLI


def module_name(path: Path, root: Path) -> tuple[str, ...]:
    """harness/frontends/html/views.py -> (harness, frontends, html, views)."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported(path: Path, root: Path) -> set[tuple[str, ...]]:
    """The harness modules (or packages) `path` imports, as absolute names."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name[:-1]
    found: set[tuple[str, ...]] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {tuple(a.name.split(".")) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = (*base, *node.module.split(".")) if node.module else base
            if node.module is None:  # `from .. import yamlfile`: modules by name
                found |= {(*module, a.name) for a in node.names}
            else:
                found.add(module)
    return {m for m in found if m[:1] == (root.name,)}


def part_of(module: tuple[str, ...]) -> str:
    """The part (or shared module) a harness module belongs to: its first level."""
    return module[1] if len(module) > 1 else "__init__"


def wrong_imports(root: Path) -> dict[str, list[str]]:
    """Module -> the modules it imports against the rule, for every module under `root`."""
    wrong = {}
    for path in sorted(root.rglob("*.py")):
        part = part_of(module_name(path, root)) if path.name != "__main__.py" else "__main__"
        if part in MAY_IMPORT:
            allowed = {part, *MAY_IMPORT[part], *SHARED}
        elif part in SHARED:
            allowed = set(SHARED)
        else:
            allowed = {*ENTRY.get(part, set()), *SHARED}
        bad = sorted(".".join(m) for m in imported(path, root)
                     if len(m) > 1 and part_of(m) not in allowed)  # fmt: skip
        if bad:
            wrong[str(path.relative_to(root))] = bad
    return wrong


def test_the_parts_import_one_way() -> None:
    checked = {p.relative_to(HARNESS).as_posix() for p in HARNESS.rglob("*.py")}
    assert "frontends/html/views.py" in checked  # the second level and below
    assert not wrong_imports(HARNESS), "imports that point the wrong way"


def test_the_check_finds_a_wrong_import_at_any_depth(tmp_path: Path) -> None:
    """The rule applied to a made-up package: a deep module that imports upward, a shared
    module that imports a part, and a function-level import are each found."""
    root = tmp_path / "harness"
    files = {
        "errors.py": "from .flash import formats\n",
        "flash/__init__.py": "",
        "flash/formats.py": "from ..errors import HarnessError\n",
        "flash/deep/inner/x.py": "def f():\n    from ....scenario import plan\n",
        "emulator/qemu.py": "from harness.frontends import cli\nfrom ..flash import formats\n",
        "frontends/html/views.py": "from ...scenario.results import CellResult\n",
        "scenario/plan.py": "from .. import yamlfile, errors\nfrom ..emulator import qemu\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert wrong_imports(root) == {
        "errors.py": ["harness.flash"],
        "flash/deep/inner/x.py": ["harness.scenario"],
        "emulator/qemu.py": ["harness.frontends"],
    }


def test_every_module_sits_in_a_part() -> None:
    loose = (
        {p.name for p in HARNESS.glob("*.py")}
        - {"__init__.py", "__main__.py"}
        - {f"{name}.py" for name in SHARED}
    )
    assert not loose, loose
