"""The plugin's step handlers."""

from dataclasses import dataclass

from harness.scenario.steps import Run

from .formats import NoteArgs


@dataclass
class NoteDetail:
    text: str


def note(run: Run, args: NoteArgs) -> NoteDetail:
    run.device().board.log.note(f"note: {args.text}")
    return NoteDetail(args.text)
