"""Steps and faults from a user's own package: pluggy hooks, found through entry points.

An installed package names a module (or any object with hooks) in the entry-point group
`esp32_ota_harness`, as pytest plugins do in `pytest11`:

    [project.entry-points.esp32_ota_harness]
    mysteps = "mysteps.plugin"

and implements the hooks of `HookSpec` there, marked with `hookimpl`:

    from harness.scenario.plugins import hookimpl

    @hookimpl
    def harness_step_formats():
        from .formats import EraseArgs, NoteArgs
        return [NoteArgs, EraseArgs]

    @hookimpl
    def harness_step_handlers():
        from .steps import note
        return {"note": note}

A fault's format names its `Fault` (`FAULT = "mysteps.faults:Erase"`,
harness.scenario.faults) and needs no handler of its own. The formats are loaded before
the scenario schema is built (harness.scenario.format calls `load_formats` first), so
`harness schema`, editors and every file's validation know the plugin's steps; the
handlers, which may import emulator code, only when a cell runs or a timeline is read.
A plugin that cannot be loaded, or that returns what is not a step, is one line naming
it (a HarnessError).
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pluggy

from ..errors import HarnessError
from .stepformats import STEP_FORMATS, Args, step_format

GROUP = "esp32_ota_harness"
hookspec = pluggy.HookspecMarker(GROUP)
hookimpl = pluggy.HookimplMarker(GROUP)
BUILTIN = frozenset(STEP_FORMATS)  # the harness's own steps: a plugin adds, never replaces


class HookSpec:
    """The hooks a plugin may implement (each without arguments)."""

    @hookspec
    def harness_step_formats(self) -> Sequence[type[Args]]:  # type: ignore[empty-body]
        """The step formats the plugin adds: `Args` subclasses with a `KIND` (pure
        pydantic; the scenario schema and the step reference are made from them)."""

    @hookspec
    def harness_step_handlers(self) -> Mapping[str, Callable[..., object]]:  # type: ignore[empty-body]
        """Step kind -> its handler, a function of `(run, args)` returning the step's
        detail (harness.scenario.steps): one for each format the plugin adds that is
        not a fault."""


@functools.cache
def manager() -> pluggy.PluginManager:
    """The plugin manager, every installed plugin registered (each loaded once)."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(HookSpec)
    for entry in importlib.metadata.entry_points(group=GROUP):
        try:
            plugin = entry.load()
        except Exception as exc:  # the user's code: any error is theirs to see, in a line
            raise HarnessError(
                f"plugin {entry.name} ({entry.value}, entry point {GROUP}) cannot be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if pm.get_plugin(entry.name) is None:
            pm.register(plugin, name=entry.name)
    return pm


def _results(hook: str) -> list[tuple[str, Any]]:
    """(plugin name, what its `hook` returned), for each plugin that implements it."""
    caller = getattr(manager().hook, hook)
    return [(impl.plugin_name, impl.function()) for impl in caller.get_hookimpls()]


@functools.cache
def load_formats() -> None:
    """Register every plugin's step formats (once), before the schema is built."""
    for name, formats in _results("harness_step_formats"):
        for fmt in formats or ():
            if not (isinstance(fmt, type) and issubclass(fmt, Args) and
                    isinstance(getattr(fmt, "KIND", None), str)):  # fmt: skip
                raise HarnessError(f"plugin {name}: harness_step_formats returned {fmt!r}, not "
                                   "a step format (an Args subclass with a KIND)")  # fmt: skip
            if fmt.KIND in STEP_FORMATS and STEP_FORMATS[fmt.KIND] is not fmt:
                raise HarnessError(f"plugin {name}: step `{fmt.KIND}` is already "
                                   f"{STEP_FORMATS[fmt.KIND].__module__}'s: give yours "
                                   "another KIND")  # fmt: skip
            step_format(fmt)


@functools.cache
def step_handlers() -> dict[str, Callable[..., object]]:
    """Step kind -> handler, from every plugin."""
    load_formats()
    table: dict[str, Callable[..., object]] = {}
    for name, handlers in _results("harness_step_handlers"):
        for kind, handler in dict(handlers or {}).items():
            if kind not in STEP_FORMATS or kind in BUILTIN or not callable(handler):
                raise HarnessError(
                    f"plugin {name}: harness_step_handlers names step {kind!r}, which is not "
                    "a step format it added (or not a function)"
                )
            table[kind] = handler
    return table
