"""From a scenario to runnable cells: one frozen plan per cell, made before anything boots.

`cells()` expands a scenario's matrix (flash sizes x firmware [x PSRAM]), chooses the
firmware by the one rule of harness.sources.manifest, reads each firmware's facts once,
and returns, per cell, either a `CellPlan` or a `Skipped` with the reason. A plan holds
everything the runner needs and the pytest plugin schedules by: the firmware and its
facts, the image to build (recipe, files to bake, raw writes), the payloads to stage,
each step's arguments with the scenario's variables expanded, the cost, whether the UART
is served, and the run policy. The run's own variables (`${port}`, `${run_dir}`, payload
files, partition offsets) are known only once the image is built and the board runs;
`expand()` fills them in then.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..emulator import launch, policy
from ..emulator.policy import RunPolicy
from ..errors import HarnessError
from ..flash import formats, images, recipes
from ..flash.firmware import FirmwareFacts, ReleaseFacts
from ..flash.inputs import read_input
from ..flash.size import FlashSize
from ..sources.manifest import ENTRY_ID, Firmware, FirmwareSelector, FirmwareUnavailable
from .format import PARTITION_VAR, RUNTIME_VARS, VARIABLE, Scenario, ScenarioError, payload_var
from .results import CellId
from .stepformats import Args, ImageFile, OtaArgs, Staged

A = TypeVar("A", bound=Args)


@dataclass(frozen=True)
class RunOptions:
    """What a run says beyond the scenario files (the command line, the plugin's options)."""

    flash_sizes: tuple[FlashSize, ...] = ()  # only these sizes of each matrix
    firmware: tuple[str, ...] = ()  # replaces every matrix's firmware
    updates: tuple[str, ...] = ()  # replaces the update axis of every matrix that has one
    watchdogs: bool | None = None  # for scenarios that do not say
    retries: int = 0


@dataclass(frozen=True)
class StepPlan:
    index: int  # its position in the scenario, from 0
    line: int  # in the scenario file
    args: Args  # the scenario's variables expanded; the run's own still `${...}`

    @property
    def number(self) -> int:
        return self.index + 1

    @property
    def kind(self) -> str:
        return self.args.KIND


@dataclass(frozen=True)
class ImagePlan:
    """The flash image a cell boots: its size's recipe as the scenario changes it, the
    files baked into the filesystem and the raw writes (sources: payload kinds, or host
    files with absolute paths)."""

    recipe: images.Recipe
    recipe_name: str
    files: tuple[ImageFile, ...]
    writes: tuple[tuple[str, str], ...]  # (partition, payload kind or host path)


@dataclass(frozen=True)
class CellPlan:
    """One matrix combination of one scenario that can run here: one test item."""

    scenario: Scenario
    cell_id: CellId  # its parts: scenario, size, firmware, PSRAM
    flash_size: FlashSize
    firmware: Firmware
    facts: FirmwareFacts
    image: ImagePlan
    steps: tuple[StepPlan, ...]
    staged: tuple[Staged, ...]
    serve: bool  # the UART is served to host tools (a `run` step)
    cost: int  # roughly how many boots it is worth
    policy: RunPolicy
    record_flash: bool = False  # a step cuts the power at flash operations it records
    variables: Mapping[str, str] = field(default_factory=dict)  # the scenario's, expanded
    update: Firmware | None = None  # the second release, where the matrix has an update axis

    @property
    def id(self) -> str:
        return self.cell_id.id  # 16mb-v1.25.0

    @property
    def name(self) -> str:
        return self.cell_id.name

    @property
    def payload_vars(self) -> frozenset[str]:
        """The payload kinds whose `${payload_*}` variable a step names (made only then)."""
        used = {name for s in self.steps for name in _strings_vars(s.args)}
        return frozenset(k for k in images.PAYLOAD_KINDS if payload_var(k) in used)

    def expand_text(
        self,
        text: str,
        where: tuple[Any, ...] | None = None,
        runtime: Mapping[str, str] | None = None,
    ) -> str:
        """`text` with this cell's variables; with `runtime`, the run's own too (all)."""
        context = {**self.variables, **(runtime or {})}
        return expand_text(self.scenario, text, context, where, final=runtime is not None)

    def expand(self, args: A, runtime: Mapping[str, str], where: tuple[Any, ...]) -> A:
        """A step's arguments with the run's own variables filled in (all of them)."""
        context = {**self.variables, **runtime}
        return _expand_args(self.scenario, args, context, where, final=True)


@dataclass(frozen=True)
class Skipped:
    """A matrix combination that cannot run here, and why."""

    scenario: Scenario
    cell_id: CellId
    flash_size: FlashSize
    reason: str
    firmware: Firmware | None = None
    unavailable: bool = False  # a named firmware that cannot be had (not a glob without files)

    @property
    def id(self) -> str:
        return self.cell_id.id

    @property
    def name(self) -> str:
        return self.cell_id.name


Cell = CellPlan | Skipped


def cells(scenario: Scenario, selector: FirmwareSelector, options: RunOptions) -> list[Cell]:
    """One plan (or skip) per matrix combination; options narrow sizes or replace firmware."""
    sizes = list(scenario.matrix.flash_size)
    if options.flash_sizes:
        sizes = [s for s in sizes if s in options.flash_sizes]
    context = _context(scenario, selector.folder)
    chosen = _choose_firmware(
        scenario, selector, *_axis(scenario.matrix.firmware, options.firmware, "firmware"), context
    )
    updates: list[_Choice | None] = [None]
    if scenario.matrix.update is not None:
        updates = list(_choose_firmware(scenario, selector, *_axis(
            scenario.matrix.update, options.updates, "update"), context))  # fmt: skip
    psram_axis: list[bool | None] = list(scenario.matrix.psram) if scenario.matrix.psram else [None]
    return [
        _cell(scenario, _Combination(size, choice, psram, update), context, options)
        for size, choice, update, psram in itertools.product(sizes, chosen, updates, psram_axis)
        if _paired(scenario.matrix.pairs, choice, update)
    ]


def _axis(
    matrix: list[str], given: tuple[str, ...], name: str
) -> tuple[tuple[str, ...], str | None]:
    """What an axis names: the options' replacement (no line to point at), else the file's."""
    return (given, None) if given else (tuple(matrix), name)


def _paired(pairs: str, firmware: _Choice, update: _Choice | None) -> bool:
    """Whether a (firmware, update) pair makes a cell: `later` (`earlier`) keeps updates of
    a later (earlier) release; a pair whose order is unknown (a file without a version,
    a firmware that cannot be had) is kept, to say why."""
    if pairs == "all" or update is None or firmware.firmware is None or update.firmware is None:
        return True
    a = ReleaseFacts.read(firmware.firmware.path).numbers
    b = ReleaseFacts.read(update.firmware.path).numbers
    if a is None or b is None:
        return True
    return b > a if pairs == "later" else b < a


@dataclass(frozen=True)
class _Choice:
    id: str
    firmware: Firmware | None
    why_not: str = ""  # when firmware is None
    unavailable: bool = False


def _choose_firmware(
    scenario: Scenario,
    selector: FirmwareSelector,
    specs: tuple[str, ...],
    axis: str | None,
    context: dict[str, str],
) -> list[_Choice]:
    """One choice per file the matrix's `axis` (firmware, update) names, or the options
    that replace it (`axis` None), or why there is none."""
    chosen: list[_Choice] = []
    for i, spec in enumerate(specs):
        where = ("matrix", axis, i) if axis else None
        expanded = expand_text(scenario, spec, context, where)
        try:
            found = selector.resolve(expanded)
        except FirmwareUnavailable as exc:
            named = ENTRY_ID.match(expanded)
            chosen.append(_Choice(named["version"] if named else expanded, None, str(exc), True))
            continue
        if not found:
            chosen.append(_Choice(expanded, None, f"no firmware file matches {expanded}: set "
                                  "FIRMWARE_DIR (--firmware-dir) or --firmware, or fetch it "
                                  "(`harness firmware fetch`)"))  # fmt: skip
        chosen += [_Choice(f.id, f) for f in found]
    if len({c.id for c in chosen}) < len(chosen):  # same version twice: use names
        chosen = [_Choice(_long_id(c.firmware) if c.firmware else c.id, c.firmware, c.why_not,
                          c.unavailable) for c in chosen]  # fmt: skip
    return chosen


def _long_id(fw: Firmware) -> str:
    return f"{fw.entry.name}-{fw.entry.version}" if fw.entry else fw.path.stem


@dataclass(frozen=True)
class _Combination:
    """One point of a matrix: a flash size, a firmware choice, a PSRAM setting."""

    size: FlashSize
    choice: _Choice
    psram: bool | None  # None: the matrix has no PSRAM axis
    update: _Choice | None = None  # None: the matrix has no update axis

    def cell_id(self, scenario: Scenario) -> CellId:
        return CellId(scenario=scenario.name, flash_size=str(self.size),
                      firmware=self.choice.id, psram=self.psram,
                      update=self.update.id if self.update else None)  # fmt: skip


def _cell(
    scenario: Scenario, combo: _Combination, context: dict[str, str], options: RunOptions
) -> Cell:
    size, choice, psram, cell_id = combo.size, combo.choice, combo.psram, combo.cell_id(scenario)
    fw, update = choice.firmware, combo.update
    if fw is None:
        return Skipped(scenario, cell_id, size, choice.why_not, unavailable=choice.unavailable)
    if update is not None and update.firmware is None:
        return Skipped(scenario, cell_id, size, f"update: {update.why_not}", fw,
                       unavailable=update.unavailable)  # fmt: skip
    facts = FirmwareFacts.read(fw.path)
    ready = launch.prepare(fw.path, launch.Choices(  # a chip that cannot boot stops here
        flash_size=size, ota=needs_ota_layout(scenario, facts),
        watchdogs=policy.on_off(scenario.watchdogs) if scenario.watchdogs else options.watchdogs,
        psram=psram if psram is not None else policy.auto(scenario.image.psram),
        alone=any(a.alone() for a in scenario.step_args), retries=options.retries,
        network="network" in scenario.needs(),
    ), recipes.search_path(scenario.path.parent.parent, Path.cwd()))  # fmt: skip
    reason = skip_reason(scenario, fw, facts)
    if reason:
        return Skipped(scenario, cell_id, size, reason, fw)
    variables = {**context, "firmware": str(fw.path), "firmware_version": facts.version or "",
                 "flash_size": str(size)}  # fmt: skip
    decided = ready.policy
    if update is not None and update.firmware is not None:
        release = ReleaseFacts.read(update.firmware.path)
        variables.update(update=str(update.firmware.path), update_version=release.version or "")
        decided = policy.with_update(decided, release.idf_version, options.retries)
    steps = tuple(
        StepPlan(i, scenario.step_line(i), _expand_args(scenario, args, variables, ("steps", i)))
        for i, args in enumerate(scenario.step_args)
    )
    step_args = [s.args for s in steps]
    image = _image(scenario, ready, steps, variables)
    _check_apps(scenario, steps, image)
    return CellPlan(
        scenario, cell_id, size, fw, facts, image, steps,
        staged=tuple(s for a in step_args if (s := a.staged()) is not None),
        serve=any(a.serves() for a in step_args),
        cost=sum(a.cost() for a in step_args),
        policy=decided,
        record_flash=any(a.records_flash() for a in step_args),
        variables=variables,
        update=update.firmware if update is not None else None,
    )  # fmt: skip


def skip_reason(scenario: Scenario, fw: Firmware, facts: FirmwareFacts) -> str | None:
    """Why a firmware cannot run this scenario (it lacks what the scenario needs)."""
    name, release = fw.path.name, facts.version or "this release"
    needs = scenario.needs()
    if "spiram" in needs and not facts.spiram:
        return f"needs a SPIRAM build; {name} is not one"
    if "no-ota" in needs and facts.ota_slots:
        return (f"needs a layout without OTA partitions (the plain ESP32_GENERIC table); "
                f"{name} has OTA slots")  # fmt: skip
    if "rollback" in needs and not facts.rollback:
        return (
            f"needs app rollback, which every MicroPython ESP32 build has from v1.21.0 "
            f"(CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE); {name} is {release}"
        )
    if "no-rollback" in needs and facts.rollback:
        return (f"needs a release without app rollback (before v1.21.0); {name} is {release}, "
                "which has it (the `rollback` scenarios are its)")  # fmt: skip
    if "vfs-in-table" in needs and not facts.fs_in_table:
        return (
            f"needs a partition table that names the filesystem (releases up to v1.25); "
            f"{release} has no vfs line: MicroPython makes the filesystem at boot after "
            "the last partition"
        )
    if "vfs-at-boot" in needs and facts.fs_in_table:
        return (
            f"needs a release that makes its filesystem at boot after the last partition "
            f"(v1.26 on); {release} names vfs in its partition table"
        )
    if "network" in needs:  # the chip's Wi-Fi QEMU, for the ESP-IDF it serves
        return launch.why_no_network(facts) or None
    return None


def needs_ota_layout(scenario: Scenario, facts: FirmwareFacts) -> bool:
    """OTA slots asked for and not in the firmware: the cell uses the OTA recipe."""
    layout = scenario.image.layout
    return layout == "ota" or ("ota" in scenario.needs() and layout is None and not facts.ota_slots)


def _image(
    scenario: Scenario, ready: launch.Launch, steps: tuple[StepPlan, ...], variables: dict[str, str]
) -> ImagePlan:
    """The image plan: the cell's recipe as the scenario changes it, its files and writes."""
    spec, base = scenario.image, scenario.path.parent.resolve()
    changes: dict[str, Any] = {}
    if spec.layout is not None:
        changes["layout"] = spec.layout
    if spec.resize is not None:
        changes["resize"] = spec.resize
    if spec.header_flash_size is not None:
        changes["header_size"] = spec.header_flash_size
    if spec.filesystem == "first-boot":
        changes["format_vfs"] = False
    recipe = ready.image_recipe(**changes)

    def source(text: str, payload: bool) -> str:
        if payload and text in images.PAYLOAD_KINDS:
            return text
        text = expand_text(scenario, text, variables, None)
        if payload and text.startswith(images.APP_OF):  # relative to the scenario, as files
            return images.APP_OF + str(base / text.removeprefix(images.APP_OF))
        return str(base / text)

    files = [ImageFile(source(src, False), dst, False) for dst, src in spec.vfs.items()]
    files += [ImageFile(source(f.source, f.payload), f.device_path, f.payload)
              for s in steps for f in s.args.files()]  # fmt: skip
    writes = tuple((part, source(src, True)) for part, src in spec.flash.items())
    return ImagePlan(recipe, ready.recipe.name, tuple(files), writes)


def _check_apps(scenario: Scenario, steps: tuple[StepPlan, ...], image: ImagePlan) -> None:
    """Every `app-of:` payload names a release file, before anything is built: one line
    `file:line: ... app-of FILE: not a firmware image` otherwise."""
    named = [(s.line, s.args.payload) for s in steps if isinstance(s.args, OtaArgs)]
    named += [(scenario.lines.get(("image", "flash"), 0), src) for _, src in image.writes]
    for line, payload in named:
        if not payload.startswith(images.APP_OF) or VARIABLE.search(payload):
            continue
        path = scenario.path.parent.resolve() / payload.removeprefix(images.APP_OF)
        try:
            kind = formats.classify(read_input(path))
        except HarnessError as exc:
            raise ScenarioError(f"{scenario.path}:{line}: app-of: {exc}") from None
        if kind not in ("app", "firmware", "flash"):
            raise ScenarioError(
                f"{scenario.path}:{line}: app-of {path}: not a firmware image ({kind}): give "
                "a MicroPython firmware .bin or an app image (.app-bin)"
            )


# -- variables ------------------------------------------------------------------------


def _context(scenario: Scenario, firmware_dir: Path) -> dict[str, str]:
    # host paths are absolute: `run` commands execute in the run folder, not here
    context = {"firmware_dir": str(firmware_dir.resolve()),
               "scenario_dir": str(scenario.path.parent.resolve())}  # fmt: skip
    for key, value in scenario.vars.items():
        context[key] = expand_text(scenario, value, context, ("vars", key))
    return context


def expand_text(
    scenario: Scenario,
    text: str,
    context: Mapping[str, str],
    where: tuple[Any, ...] | None,
    *,
    final: bool = False,
) -> str:
    """`text` with each ${name} replaced; the run's own stay `${name}` until it runs
    (`final`: it runs, so a name still unknown is an error)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in context:
            return context[name]
        if not final and (name in RUNTIME_VARS or PARTITION_VAR.fullmatch(name)):
            return match.group(0)
        raise ScenarioError(scenario.unknown_var(name, where))

    return VARIABLE.sub(value, text)


def _expand_args(
    scenario: Scenario,
    args: A,
    context: Mapping[str, str],
    where: tuple[Any, ...],
    *,
    final: bool = False,
) -> A:
    """The step's arguments with ${variables} substituted (a wrapped step's too)."""

    def expand(text: str) -> str:
        return expand_text(scenario, text, context, where, final=final)

    update: dict[str, Any] = {}
    for name, value in args:
        if isinstance(value, str):
            update[name] = expand(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            update[name] = [expand(v) for v in value]
        elif isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            update[name] = {k: expand(v) for k, v in value.items()}
        elif isinstance(value, Args):
            update[name] = _expand_args(scenario, value, context, (*where, name), final=final)
    return args.model_copy(update=update)


def _strings_vars(args: Args) -> set[str]:
    """Every ${name} left in a step's string arguments (lists, mappings and a wrapped
    step's included)."""
    found: set[str] = set()
    for _, value in args:
        if isinstance(value, Args):
            found |= _strings_vars(value)
            continue
        items: list[Any] = list(value.values()) if isinstance(value, dict) else (
            value if isinstance(value, list) else [value])  # fmt: skip
        found.update(n for t in items if isinstance(t, str) for n in VARIABLE.findall(t))
    return found
