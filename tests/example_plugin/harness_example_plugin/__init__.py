"""A user's own steps for the harness, as an installed package adds them: a `note` step
and an `erase_sector` fault. Its entry point (group `esp32_ota_harness`) names this
module; tests/test_plugins.py puts it on the path with that entry point and runs it.

The formats are pure pydantic (the scenario schema is built from them); the handler and
the fault, which talk to the board, are imported only when the harness asks for them.
"""

from harness.scenario.plugins import hookimpl


@hookimpl
def harness_step_formats():
    from .formats import EraseSectorArgs, NoteArgs

    return [NoteArgs, EraseSectorArgs]


@hookimpl
def harness_step_handlers():
    from .steps import note

    return {"note": note}
