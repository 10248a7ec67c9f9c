"""YAML files the user writes (scenarios, image recipes, the firmware manifest), validated.

`load()` parses a file keeping every node's line number, validates it with a pydantic
model, and turns the first problem into one line, `file:line: field: what is wrong`,
in the file's own terms (a `FileFormatError`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import HarnessError

M = TypeVar("M", bound=BaseModel)
Where = tuple[Any, ...]
Lines = dict[Where, int]


class FileFormatError(HarnessError):
    """A file that cannot be used as written: `file:line: problem`."""


def load(
    path: Path,
    model: type[M],
    *,
    what: str,
    message: Callable[[dict[str, Any]], str | None] = lambda error: None,
) -> tuple[M, Lines, dict[str, Any]]:
    """Read `path` as `model`; return (the model, line numbers by key path, the raw data).

    `what` names the file kind in errors ("scenario"); `message` may word a pydantic
    error in the file's terms (None: the default wording).
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise FileFormatError(f"{path}:{line}: YAML syntax error: {exc.problem}") from None
    if not isinstance(data, dict) or node is None:
        raise FileFormatError(f"{path}:1: a {what} is a YAML mapping")
    lines: Lines = {}
    _record_lines(node, (), lines)
    try:
        return model.model_validate(data), lines, data
    except ValidationError as exc:
        raise FileFormatError(_first_error(path, exc, lines, what, message)) from None


def _record_lines(node: yaml.Node, where: Where, lines: Lines) -> None:
    lines[where] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = (*where, key.value)
            lines[here] = key.start_mark.line + 1
            _record_lines(value, here, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, (*where, i), lines)


def _first_error(
    path: Path,
    exc: ValidationError,
    lines: Lines,
    what: str,
    message: Callable[[dict[str, Any]], str | None],
) -> str:
    """pydantic's first error as `file:line: where: message`."""
    error: dict[str, Any] = dict(exc.errors()[0])
    loc: Where = ()
    for part in error["loc"]:  # pydantic adds union tags to loc; keep the real path
        if (*loc, part) in lines:
            loc = (*loc, part)
    line = lines.get(loc, lines.get((), 1))
    kind = error["type"]
    text = message(error)
    if text is None:
        text = str(error["msg"]).removeprefix("Value error, ")
        if kind == "missing":
            text = f"missing required field {error['loc'][-1]!r}"
        elif kind == "extra_forbidden":
            text = f"unknown field {error['loc'][-1]!r}"
        elif kind.endswith("_type") or kind.endswith("_parsing"):
            text = f"{text} (got {error['input']!r})"
    field = ".".join(str(p) for p in loc) or what
    return f"{path}:{line}: {field}: {text}"
