"""The plugin's step formats: what a scenario may write."""

from typing import ClassVar

from pydantic import Field, NonNegativeInt

from harness.scenario.stepformats import Args


class NoteArgs(Args):
    """Write a note into the serial log (between the harness's own `--` lines)."""

    KIND: ClassVar[str] = "note"
    SHORTHAND: ClassVar[str | None] = "text"

    text: str


class EraseSectorArgs(Args):
    """A 4 KB sector of a partition erased while the board is off, one point per sector
    named; the steps after it run from a power-on of each."""

    KIND: ClassVar[str] = "erase_sector"
    FAULT: ClassVar[str | None] = "harness_example_plugin.faults:EraseSector"

    partition: str
    sectors: list[NonNegativeInt] = Field(min_length=1)
