"""`harness upgrade`: will a board flashed with release A take release B's app by OTA?

One run answers six questions. It is a scenario (harness.scenario), made in memory and
planned and run by the same engine as the library, so `--save` writes exactly what ran,
with what it observed as assertions:

1. A's image (its bootloader, table and app; OTA slots by MicroPython's OTA table where
   A has none) boots and makes its filesystem, and A writes the user's files onto it;
2. B's app (`app-of:`, as B's .app-bin is) goes into the other slot and set_boot()
   selects it (with `--command`, the user's own OTA library does it); B boots: **boots
   B**, **from which slot**; the files read back: **files kept**;
3. the power goes before B confirms: the board comes back on A (**rollback protected**)
   or on the unconfirmed B again;
4. B runs again (selected again where the board rolled back), confirms itself, and a
   power-on boots it again: **confirms**;
5. A's app is selected again (B back to A; A's app is still in its slot): A boots and
   reads the files B's run touched: **downgrade safe**.

A later app larger than A's slot is refused by set_boot(): predicted from the sizes,
confirmed by the run, which ends there. Each answer carries the lines and states that
decided it. Exit codes: 0 answered; 1 an answer `--require`d is not yes; 2 could not
run (bad input, or the run failed for another reason than an answer).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from ..emulator.device import Boot
from ..emulator.ota import OtaReport
from ..errors import HarnessError
from ..flash import formats, images
from ..flash.firmware import FirmwareFacts, ReleaseFacts
from ..flash.inputs import read_firmware
from ..flash.size import FlashSize
from ..scenario import format, plan, runner
from ..scenario.results import CellResult, StepRecord, load_cell
from ..scenario.steps import Matched, OtadataDetail, ReplDetail
from ..sources.manifest import ENTRY_ID, FirmwareSelector
from .html import write_report

Question = Literal["boots", "slot", "files", "confirms", "rollback", "downgrade"]
QUESTIONS: tuple[Question, ...] = ("boots", "slot", "files", "confirms", "rollback", "downgrade")
LABELS: dict[Question, str] = {
    "boots": "boots B", "slot": "from which slot", "files": "files kept",
    "confirms": "confirms", "rollback": "rollback protected", "downgrade": "downgrade safe",
}  # fmt: skip
ANSWERED, REQUIRED_NO, COULD_NOT_RUN = 0, 1, 2
CORRUPTED = "The filesystem appears to be corrupted"
SLOT = "ota_1"  # where B goes: the other slot of a board running A from ota_0
# the user's files when none are given: an app that writes to the filesystem at every boot
SAMPLE_FILES = {
    "main.py": (
        "# made by harness upgrade: counts its boots in /boots.txt (a write at every boot)\n"
        "import os\n\n"
        "release = os.uname().version.split()[0]\n"
        "with open('/boots.txt', 'a') as f:\n"
        "    f.write(release + '\\n')\n"
        "print('main.py ran on', release)\n"
    ),
    "settings.json": '{"interval": 60, "server": "ota.example.net"}\n',
    "lib/appconfig.py": "NAME = 'fleet-42'\n",
}
# on the device after each boot that matters: each user file's sha256, or `missing`
HASHES = """import hashlib, binascii
for _p in {files!r}:
    try:
        with open(_p, 'rb') as _f:
            print(_p, binascii.hexlify(hashlib.sha256(_f.read()).digest()).decode())
    except OSError:
        print(_p, 'missing')
"""
# after the power-on that tests rollback: B again, wherever the board came back on
RESELECT = f"""import esp32
if esp32.Partition(esp32.Partition.RUNNING).info()[4] != {SLOT!r}:
    esp32.Partition.find(esp32.Partition.TYPE_APP, label={SLOT!r})[0].set_boot()
"""
CONFIRM = "import esp32; esp32.Partition.mark_app_valid_cancel_rollback()"
# a write by B's own filesystem code, which A must read back after the downgrade (a
# release's littlefs may not see what a later one wrote: docs/upgrades.md)
MARKER = "/upgrade-check.txt"
WRITE_MARKER = f"with open({MARKER!r}, 'w') as _f:\n    _f.write('${{update_version}}')\n"
READ_MARKER = f"""try:
    print(open({MARKER!r}).read())
except OSError as _e:
    print('missing', _e)
"""
D = TypeVar("D")


@dataclass(frozen=True)
class Request:
    """A (the release on the board) and B (the update): files or manifest entries."""

    source: str
    target: str
    flash_size: FlashSize | None = None
    files: Path | None = None  # the user's files (a folder); None: a small sample app
    device_lib: Path | None = None  # the user's OTA library (-> /lib), run by `command`
    command: str | None = None
    require: tuple[Question, ...] = ()
    retries: int = 1


@dataclass
class Answer:
    question: Question
    value: str  # yes | no | a slot | not reached
    why: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def yes(self) -> bool:
        return self.value == ("ota_1" if self.question == "slot" else "yes")

    def text(self) -> str:
        head = f"{LABELS[self.question] + ':':<20}{self.value}"
        return "\n".join([head + (f", {self.why}" if self.why else ""),
                          *(f"  | {line}" for line in self.lines)])  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    text: str
    exit_code: int
    answers: tuple[Answer, ...] = ()


# -- the inputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """What the run is made of: A and B as files, the flash size, the user's files."""

    source: Path
    target: Path
    size: FlashSize
    files: Path  # a folder
    hashes: dict[str, str]  # device path -> sha256, as put

    @property
    def check(self) -> str:
        return HASHES.format(files=sorted(self.hashes))


def check(req: Request, selector: FirmwareSelector, save: Path | None) -> tuple[Path, Path]:
    """A and B as files, and the options, refused in one line before anything boots."""
    if save is not None and save.exists():
        raise HarnessError(f"{save} exists: give --save a new file name (it is never overwritten)")
    if (req.device_lib is None) != (req.command is None):
        raise HarnessError("--device-lib and --command go together: your OTA library and the "
                           "REPL line that runs it")  # fmt: skip
    source, target = _file(req.source, selector, "--from"), _file(req.target, selector, "--to")
    read_firmware(source)  # a firmware image for the board
    images.app_of(target)  # a firmware or an app image to send
    if req.files is not None and not req.files.is_dir():
        raise HarnessError(f"--files {req.files}: not a folder (give the folder of your files)")
    return source, target


def inputs(req: Request, selector: FirmwareSelector, save: Path | None, folder: Path) -> Inputs:
    """A, B and the files (`folder`: where the sample files go when the user gave none)."""
    source, target = check(req, selector, save)
    files = req.files or _sample(folder)
    found = sorted(p for p in files.rglob("*") if p.is_file())
    if not found:
        raise HarnessError(f"--files {files}: has no files")
    hashes = {"/" + p.relative_to(files).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in found}  # fmt: skip
    size = req.flash_size or FirmwareFacts.read(source).header_flash_size
    return Inputs(source, target, size, files.resolve(), hashes)


def _file(given: str, selector: FirmwareSelector, option: str) -> Path:
    if ENTRY_ID.match(given):
        return selector.entry(given).path
    path = Path(given)
    if not path.is_file():
        raise HarnessError(f"{option} {given}: no such file (or BOARD[-VARIANT]@VERSION)")
    return path.resolve()


def _sample(folder: Path) -> Path:
    out = folder / "upgrade-files"
    for name, text in SAMPLE_FILES.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    return out


# -- the run, as a scenario -------------------------------------------------------------

# what each step of the run is for: the judge reads the steps by these names
Role = Literal["", "ota_b", "banner_b", "files_b", "marker_b", "pending", "after_cut",
               "confirm", "confirmed", "after_on", "ota_a", "banner_a", "files_a",
               "marker_a"]  # fmt: skip


Steps = list[tuple[Role, dict[str, Any]]]


def steps(req: Request, files: Inputs, where: Path, fits: bool) -> Steps:
    """The run's steps, each with its role (`fits`: B's app fits A's slot, else the run
    ends at set_boot()'s refusal)."""
    ota: dict[str, Any] = {"payload": "app-of:${update}", "method": "staged"}
    if req.command:
        ota.update(method="library", command=req.command)
        if req.device_lib:
            ota["device_lib"] = _rel(req.device_lib, where)
    if not fits and not req.command:  # a library meets the slot's end its own way
        ota["set_boot_error"] = "ESP_ERR_OTA_VALIDATE_FAILED"
    run: Steps = [
        ("", {"boot": "prompt"}),
        ("", {"not_expect": [CORRUPTED]}),
        ("", {"put": {"src": _rel(files.files, where), "dst": "/"}}),
        ("ota_b", {"ota": ota}),
    ]
    if not fits:
        return run
    return [
        *run,
        ("banner_b", {"expect": "MicroPython ${update_version} on"}),
        ("files_b", {"repl": files.check}),
        ("marker_b", {"repl": WRITE_MARKER}),
        ("pending", {"assert_otadata": {}}),
        ("", {"power_cut": {}}),
        ("", {"boot": "prompt"}),
        ("after_cut", {"assert_booted": ["ota_0", "ota_1"]}),
        ("", {"repl": RESELECT}),
        ("", {"reset": "soft"}),
        ("confirm", {"repl": CONFIRM}),
        ("confirmed", {"assert_otadata": {}}),
        ("", {"power_cut": {}}),
        ("", {"boot": "prompt"}),
        ("after_on", {"assert_booted": ["ota_0", "ota_1"]}),
        ("ota_a", {"ota": {"payload": "app", "method": "staged", "target": "ota_0"}}),
        ("banner_a", {"expect": "MicroPython ${firmware_version} on"}),
        ("files_a", {"repl": files.check}),
        ("marker_a", {"repl": READ_MARKER}),
    ]


def scenario_data(req: Request, files: Inputs, where: Path, run: Steps) -> dict[str, Any]:
    source, target = _spec(req.source, files.source, where), _spec(req.target, files.target, where)
    return {
        "title": f"A board flashed with {files.source.name} takes the app of "
                 f"{files.target.name} by OTA ({files.size})",
        "source": f"harness upgrade, {datetime.date.today().isoformat()}: add where the "
                  "question came from",
        "requires": ["ota"],
        "matrix": {"flash_size": [str(files.size)], "firmware": [source], "update": [target]},
        # the filesystem A makes at its first boot, unless a library and its update are
        # baked into it (then the harness formats it, as MicroPython does)
        "image": {"filesystem": "built" if req.command else "first-boot"},
        "steps": [step for _, step in run],
    }  # fmt: skip


def _spec(given: str, path: Path, where: Path) -> str:
    """A manifest entry as it was given; a file as `${scenario_dir}/..`."""
    return given if ENTRY_ID.match(given) else _rel(path, where)


def _rel(path: Path, where: Path) -> str:
    """`${scenario_dir}/..` form, so the saved file works from any checkout location."""
    return "${scenario_dir}/" + os.path.relpath(path.resolve(), where.resolve())


def _plan(
    data: dict[str, Any], path: Path, selector: FirmwareSelector, retries: int
) -> plan.CellPlan:
    scenario = format.from_data(data, path)
    cell = plan.cells(scenario, selector, plan.RunOptions(retries=retries))[0]
    if isinstance(cell, plan.Skipped):
        raise HarnessError(f"cannot run: {cell.reason}")
    return cell


def fits(cell: plan.CellPlan, files: Inputs) -> tuple[bool, str]:
    """Whether B's app fits A's slot, and the sizes, from the built image and the app."""
    built = runner.build(cell)  # an image that cannot be made: one line, before any boot
    with built.image.path.open("rb") as f:
        table = formats.parse_table(f.read(formats.TABLE_OFFSET + formats.SECTOR))
    slot = table.get(SLOT)
    app = images.app_of(files.target).stat().st_size
    if slot is None:
        raise HarnessError(f"the image of {files.source.name} has no {SLOT}")
    return app <= slot.size, (f"B's app is {app} bytes, {SLOT} of A's table holds "
                              f"{slot.size} ({slot.size:#x})")  # fmt: skip


def run(
    req: Request,
    save: Path | None,
    artifacts: Path,
    selector: FirmwareSelector,
    qemu: str | None = None,
) -> Verdict:
    """Run the upgrade path and answer each question."""
    where = (save.parent if save else artifacts).resolve()
    where.mkdir(parents=True, exist_ok=True)
    given = inputs(req, selector, save, save.parent / f"{save.stem}-files" if save else artifacts)
    path = where / (save.name if save else "upgrade.yaml")
    trial = _plan(scenario_data(req, given, where, steps(req, given, where, True)), path,
                  selector, 0)  # fmt: skip
    fit, sizes = fits(trial, given)
    roles = steps(req, given, where, fit)
    data = scenario_data(req, given, where, roles)
    cell = _plan(data, path, selector, req.retries)
    result = load_cell(Path(runner.run_cell(cell, runner.Setup(artifacts, qemu)).artifacts))
    answers = judge(result, [r for r, _ in roles], given, sizes)
    stopped = _stopped(result, answers)
    out = [f"== harness upgrade: {given.source.name} ({_version(given.source)}) -> "
           f"{given.target.name} ({_version(given.target)}), {given.size} ==",
           *(a.text() for a in answers), *_tail(result, stopped, artifacts, given)]  # fmt: skip
    if save is not None and result.status == "passed":
        out.append(_save(save, data, result, roles))
    elif save is not None:
        out.append(f"not saved: the run stopped before its end ({_first_line(result)})")
    return Verdict("\n".join(out), exit_code(answers, req.require, stopped), tuple(answers))


def exit_code(answers: list[Answer], require: tuple[Question, ...], stopped: str) -> int:
    """2 when the run could not answer; 1 when a required answer is not yes; else 0."""
    if stopped:
        return COULD_NOT_RUN
    return REQUIRED_NO if any(not a.yes for a in answers if a.question in require) else ANSWERED


def _tail(result: CellResult, stopped: str, artifacts: Path, given: Inputs) -> list[str]:
    """Why the run could not answer, the image, the artifacts and the report."""
    out = [f"could not run: {stopped}"] if stopped else []
    if result.image is not None:
        out.append(f"image:     {result.image.conversion}")
    out.append(f"artifacts: {result.artifacts}")
    title = f"harness upgrade: {given.source.name} -> {given.target.name}"
    page = write_report(artifacts, cells=[Path(result.artifacts)], title=title)
    return [*out, f"report:    {page}"]


def _version(path: Path) -> str:
    return ReleaseFacts.read(path).version or "version unknown"


def _first_line(result: CellResult) -> str:
    return result.message.splitlines()[0] if result.message else result.status


def _stopped(result: CellResult, answers: list[Answer]) -> str:
    """Why the run's answers cannot be trusted: the emulator failed its last attempt (a
    stalled guest, QEMU's own crash, a watchdog the host fired: not the firmware's
    answer), or it stopped before any answer."""
    last = result.attempts[-1] if result.attempts else None
    if result.status == "failed" and last is not None and last.emulator:
        return (f"{_first_line(result)} (the emulator's failure, not an answer: run again, "
                "with --retries N)")  # fmt: skip
    if result.status == "passed" or any(a.value != "not reached" for a in answers):
        return ""
    return _first_line(result)


# -- the answers -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """The run's steps by role, and where it stopped."""

    result: CellResult
    by_role: dict[str, StepRecord[Any]]
    failed: StepRecord[Any] | None
    failed_role: str

    @classmethod
    def of(cls, result: CellResult, roles: list[Role]) -> _Run:
        by_role: dict[str, StepRecord[Any]] = {}
        failed, failed_role = None, ""
        for record in result.timeline:
            role = roles[record.index - 1] if record.index <= len(roles) else ""
            if record.status == "failed" and failed is None:
                failed, failed_role = record, role
            if role and record.status == "passed":
                by_role[role] = record
        return cls(result, by_role, failed, failed_role)

    def detail(self, role: Role, of: type[D]) -> D | None:
        record = self.by_role.get(role)
        return record.detail if record is not None and isinstance(record.detail, of) else None

    def failure(self) -> list[str]:
        """The failure's line and the last serial lines it quotes."""
        lines = self.result.message.splitlines()
        head = lines[0].split(" failed: ", 1)[-1] if lines else ""
        quoted = [line.strip().removeprefix("| ").strip() for line in lines[1:]
                  if line.startswith("    ")]  # fmt: skip
        if self.result.violation is not None:
            quoted = [self.result.violation.line.strip()]
        return [head, *quoted[-4:]]


def judge(result: CellResult, roles: list[Role], files: Inputs, sizes: str) -> list[Answer]:
    """One answer per question, from the run's typed step results."""
    run = _Run.of(result, roles)
    booted = _boots(run, sizes)
    answers = [booted, _slot(run), _files(run, files, "files_b", "B"),
               _confirms(run), _rollback(run), _downgrade(run, files)]  # fmt: skip
    if not booted.yes:  # nothing after B's boot can be asked
        for a in answers[1:]:
            if a.value == "not reached":
                a.why = "B never ran"
    return answers


def _boots(run: _Run, sizes: str) -> Answer:
    ota = run.detail("ota_b", OtaReport)
    if ota is not None and ota.set_boot_error:
        return Answer("boots", "no", f"set_boot() refused it: {sizes}",
                      [ota.set_boot_error, *ota.bootloader_lines])  # fmt: skip
    banner = run.detail("banner_b", Matched)
    if banner is not None and ota is not None:
        return Answer("boots", "yes", f"it runs after the update ({sizes})",
                      [*ota.bootloader_lines, *banner.lines])  # fmt: skip
    if run.failed_role in ("ota_b", "banner_b"):
        lines = [*(ota.bootloader_lines if ota else []), *run.failure()]
        return Answer("boots", "no", f"{sizes}", lines)
    return Answer("boots", "not reached", "", run.failure() if run.failed else [])


def _slot(run: _Run) -> Answer:
    ota = run.detail("ota_b", OtaReport)
    if ota is None or ota.booted is None:
        return Answer("slot", "not reached")
    states = _states(ota.after.states() if ota.after else [])
    return Answer("slot", ota.booted, f"the update was written to {ota.target}; otadata "
                                      f"{states}")  # fmt: skip


def _files(run: _Run, files: Inputs, role: Role, who: str) -> Answer:
    out = run.detail(role, ReplDetail)
    if out is None or out.output is None:
        return Answer("files", "not reached")
    seen = dict(line.split(" ", 1) for line in out.output.splitlines() if " " in line)
    missing = [p for p in files.hashes if seen.get(p) == "missing" or p not in seen]
    changed = [p for p in files.hashes if p not in missing and seen.get(p) != files.hashes[p]]
    lines = [f"{p}: {'missing' if p in missing else 'changed' if p in changed else 'same'}"
             for p in sorted(files.hashes)]  # fmt: skip
    if missing:
        return Answer("files", "no", f"{len(missing)} of {len(files.hashes)} missing under "
                                     f"{who}", lines)  # fmt: skip
    note = f" ({len(changed)} changed since put: your app may write them)" if changed else ""
    return Answer("files", "yes", f"all {len(files.hashes)} read back under {who}{note}", lines)


def _confirms(run: _Run) -> Answer:
    confirmed = run.detail("confirmed", OtadataDetail)
    after = run.detail("after_on", Boot)
    if confirmed is None or after is None:
        why = run.failure() if run.failed_role in ("confirm", "confirmed", "after_on") else []
        return Answer("confirms", "no" if why else "not reached", "", why)
    state = confirmed.state
    lines = [f"otadata after mark_app_valid_cancel_rollback(): {_states(state.states())}, selects "
             f"{state.boot.slot}", f"after a power-on: {after.booted}"]  # fmt: skip
    if after.booted == SLOT and state.boot.slot == SLOT:
        return Answer("confirms", "yes", "it stays on B", lines)
    return Answer("confirms", "no", f"a power-on boots {after.booted}", lines)


def _rollback(run: _Run) -> Answer:
    pending = run.detail("pending", OtadataDetail)
    after = run.detail("after_cut", Boot)
    if pending is None or after is None:
        return Answer("rollback", "not reached")
    lines = [f"otadata while B ran unconfirmed: {_states(pending.state.states())}",
             f"after a power-on: {after.booted}"]  # fmt: skip
    if after.booted == "ota_0":
        return Answer("rollback", "yes", "an unconfirmed B is rolled back to A", lines)
    how = ("A's app selected it without PENDING_VERIFY" if "PENDING_VERIFY" not in
           pending.state.states() else "its PENDING_VERIFY was not acted on")  # fmt: skip
    return Answer("rollback", "no", f"an unconfirmed B boots again ({how})", lines)


def _states(states: list[str]) -> str:
    return "[" + ", ".join(states) + "]"


def _downgrade(run: _Run, files: Inputs) -> Answer:
    if run.failed_role in ("ota_a", "banner_a", "files_a", "marker_a") or (
        run.failed is not None and run.result.violation is not None
    ):
        return Answer("downgrade", "no", "A does not come back", run.failure())
    banner = run.detail("banner_a", Matched)
    kept = _files(run, files, "files_a", "A")
    if banner is None or kept.value == "not reached":
        return Answer("downgrade", "not reached")
    if not kept.yes:
        return Answer("downgrade", "no", f"A runs, but {kept.why}", [*banner.lines, *kept.lines])
    marker = run.detail("marker_a", ReplDetail)
    wrote = ReleaseFacts.read(files.target).version or ""
    said = marker.output if marker is not None and marker.output is not None else "not read"
    lines = [*banner.lines, f"{MARKER}, written by B ({wrote}), under A: {said}"]
    if said != wrote:
        return Answer("downgrade", "no", f"A runs and {kept.why}, but what B wrote is not "
                      "there: A's filesystem code does not see B's writes", lines)  # fmt: skip
    return Answer("downgrade", "yes", f"A runs from ota_0 again, {kept.why}, and reads what "
                  "B wrote", lines)  # fmt: skip


# -- saving -------------------------------------------------------------------------------


def _save(save: Path, data: dict[str, Any], result: CellResult, roles: Steps) -> str:
    """What ran, with what it showed as assertions; the file must load as written."""
    for record in result.timeline:
        seen = _observed(record, *roles[record.index - 1])
        if seen is not None:
            data["steps"][record.index - 1] = seen
    header = "# Made by `harness upgrade`: fill in the source; the steps are what ran.\n"
    save.write_text(header + yaml.safe_dump(data, sort_keys=False, width=100))
    format.load(save)
    return f"saved:     {save} (runs in make test-{str(data['matrix']['flash_size'][0]).lower()})"


def _observed(record: StepRecord[Any], role: Role, step: dict[str, Any]) -> dict[str, Any] | None:
    """A step that looked, as the assertion of what it saw (None: keep it as it ran)."""
    detail = record.detail
    if isinstance(detail, Boot) and detail.booted and record.step == "assert_booted":
        return {"assert_booted": detail.booted}
    if isinstance(detail, OtadataDetail):
        return {"assert_otadata": {"states": detail.state.states(),
                                   "selects": detail.state.boot.slot}}  # fmt: skip
    if (
        isinstance(detail, ReplDetail)
        and role in ("files_b", "files_a", "marker_a")
        and (detail.output)
    ):
        return {"repl": {"code": step["repl"], "expect": detail.output}}
    return None
