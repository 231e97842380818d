"""The papermill runner: executes the selected runbook notebooks in order into one run folder, under the run's
context (run lock, record, seal: `runbook_lib.run.context`)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import papermill

from runbook_lib import exceptions, progress
from runbook_lib.cluster.lock import LOCK_KEY, RUN_ID_ENV
from runbook_lib.config import known_secrets, load_params
from runbook_lib.exceptions import BadInput, RunLocked
from runbook_lib.run import audit, verdict_table
from runbook_lib.run.audit import RESULTS_DIR
from runbook_lib.run.context import RunContext, continued_run_dir, new_run_dir
from runbook_lib.run.inputs import check_targets
from runbook_lib.run.kernel import LocalKernelManager
from runbook_lib.run.report import NOTEBOOKS_DIR, ROLLBACK, SectionResult, available, export_html
from runbook_lib.watch.journal_progress import follow

COMMAND = "runbook run"
"""How the runner names itself in the run lock and in provenance.json."""


def _subclass_names(cls: type) -> set[str]:
    return {cls.__name__}.union(*(_subclass_names(c) for c in cls.__subclasses__()))


BAD_INPUT_ERRORS = _subclass_names(exceptions.BadInput) | {exceptions.RunLocked.__name__}
"""Exceptions that mean "bad input, nothing changed" when a notebook fails with them (exit code 2)."""


@dataclass
class RunResult:
    run_dir: Path
    sections: list[SectionResult] = field(default_factory=list)
    stopped: str = ""
    manifest_sha256: str = ""

    @property
    def ok(self) -> bool:
        return all(s.status != "fail" for s in self.sections) and not self.stopped

    @property
    def exit_code(self) -> int:
        """2 when a section failed on bad input (nothing changed), 1 on a failed check or a stopped run, else 0."""
        bad = [s for s in self.sections if s.status == "fail"]
        if any(s.summary.split(":", 1)[0] in BAD_INPUT_ERRORS for s in bad):
            return 2
        return 1 if bad or self.stopped else 0


def select(names: list[str], only: str | None = None, start: str | None = None) -> list[str]:
    """Sections to run: all but rollback by default, one with `only`, or from `start` on."""
    def find(name: str) -> str:
        matches = [n for n in names if n == name or n.split("_", 1)[-1] == name or n.startswith(name)]
        if len(matches) != 1:
            raise BadInput(f"no single section matches {name!r}; sections are {', '.join(names)}")
        return matches[0]
    if only:
        return [find(only)]
    chosen = [n for n in names if n != ROLLBACK]
    if start:
        first = find(start)
        chosen = [n for n in chosen if n >= first]
    return chosen


def _redacting(echo: Callable[[str], None]) -> Callable[[str], None]:
    """`echo` with every known password replaced, so that no line the runner prints can carry one."""
    def say(line: str) -> None:
        echo(audit.redact(line, known_secrets()))
    return say


def run(params_file: str | Path, out: str | Path | None = None, only: str | None = None, start: str | None = None,
        notebooks_dir: Path = NOTEBOOKS_DIR, echo: Callable[[str], None] = print,
        take_over_lock: bool = False) -> RunResult:
    """Execute the selected notebooks in order with papermill, stop at the first failure, write the index.

    Before anything changes, the nodes the params name are checked live (bad input raises, exit code 2) and a run
    with `apply: true` takes the cluster's run lock. A run `start`ing at a later section without `out` continues the
    newest run folder whose baseline was taken before the expansion (its journal, baseline and lock record), never a
    new one; without such a folder it raises BadInput. Last, the folder is sealed: provenance, the params with
    secrets redacted, and the sha256 manifest of every file.
    """
    started = time.time()
    params = load_params(params_file)
    sections = select(available(notebooks_dir), only, start)
    say = _redacting(echo)
    continued = continued_run_dir(params.report_dir, option="--out") if start and not out else None
    creds = params.credentials()
    check_targets(params, creds)
    existed = continued is not None or (out is not None and Path(out).resolve().exists())
    run_dir = continued or (Path(out).resolve() if out else new_run_dir(params.report_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    context = RunContext(params, run_dir, started=started)
    try:
        lock = context.take_lock(COMMAND, take_over=take_over_lock) if params.model.apply else None
    except (RunLocked, BadInput):
        if not existed and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    result = RunResult(run_dir=run_dir)
    if not params.model.probe.enabled:
        say("NOT MEASURED: probe.enabled is false, so this run measures no client latency, failed requests or "
            "downtime; its verdict cannot prove zero downtime")
    say(f"run folder: {run_dir}" + (f" (continued from {sections[0]} on: the newest run folder under "
                                     f"{params.report_dir} whose baseline.json was taken before the expansion)"
                                     if continued is not None else ""))
    if lock is not None and lock.taken_over is not None:
        say(f"took over the stale run lock of {lock.taken_over.describe()}")
    outer_run_id = os.environ.get(RUN_ID_ENV)
    os.environ[RUN_ID_ENV] = context.run_id
    try:
        for i, name in enumerate(sections, start=1):
            if lock is not None and lock.lost is not None:
                result.stopped = f"the run lock was taken over by {lock.lost.describe()}"
                say(f"stopped before {name}: {result.stopped}")
                break
            say(f"[{i}/{len(sections)}] {name} ...")
            with follow(run_dir / "journal.jsonl", name):
                section = execute(name, params.path, run_dir, notebooks_dir)
            section.summary = audit.redact(section.summary, known_secrets())
            result.sections.append(section)
            say(f"[{i}/{len(sections)}] {name}: {section.status} ({section.seconds:.1f} s) {section.summary}")
            if section.status == "fail":
                say(f"stopped at {name}; later sections were not run")
                break
    except BaseException as e:
        result.stopped = f"interrupted: {type(e).__name__}"
        raise
    finally:
        if outer_run_id is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = outer_run_id
        if lock is not None and not context.release():
            say(f"warning: the run lock {LOCK_KEY!r} was not ours any more or could not be deleted; it expires by "
                 "itself within a minute")
        sealed = context.seal(COMMAND, result.exit_code, result.sections, notebooks_dir, stopped=result.stopped,
                              lock={"held": lock is not None, "key": LOCK_KEY if lock else "",
                                    "taken_over_from": lock.taken_over.describe() if lock and lock.taken_over else ""})
        if sealed["stopped"]:
            say(f"stopped the run's {' and '.join(sealed['stopped'])}")
        result.manifest_sha256 = sealed["manifest_sha256"]
        if sealed["scrubbed"] or sealed["binary"]:
            say(f"warning: the password appeared in {sealed['scrubbed'] + sealed['binary']} and was redacted where "
                 "possible; this is a bug, please report it")
        say(verdict_table.headline(run_dir))
        say(f"report: {run_dir / 'index.html'}")
        say(f"manifest: {sealed['manifest']} (sha256 {sealed['manifest_sha256']}; `runbook verify-report {run_dir}`)")
    return result


def execute(name: str, params_path: Path, run_dir: Path, notebooks_dir: Path = NOTEBOOKS_DIR) -> SectionResult:
    """Run one notebook into the run folder and read back the verdict it recorded."""
    source = notebooks_dir / f"{name}.ipynb"
    target = run_dir / f"{name}.ipynb"
    started = time.time()
    error = ""
    headless = os.environ.get(progress.HEADLESS_ENV)
    os.environ[progress.HEADLESS_ENV] = "1"  # the kernel inherits it: no progress bars in the audit record
    try:
        papermill.execute_notebook(str(source), str(target), kernel_name="python3", progress_bar=False,
                                   parameters={"params_file": str(params_path), "run_dir": str(run_dir)},
                                   cwd=str(notebooks_dir), kernel_manager_class=LocalKernelManager)
    except papermill.PapermillExecutionError as e:
        error = f"{e.ename}: {e.evalue}"
    except Exception as e:  # the kernel died or could not start: record it and stop the run, never crash the runner
        error = f"{type(e).__name__}: {e} (the notebook's process ended; `runbook check` shows the cluster state)"
    finally:
        if headless is None:
            os.environ.pop(progress.HEADLESS_ENV, None)
        else:
            os.environ[progress.HEADLESS_ENV] = headless
    seconds = time.time() - started
    page = export_html(target) if target.exists() else None
    verdict_path = run_dir / RESULTS_DIR / f"{name}.json"
    verdict = json.loads(verdict_path.read_text()) if verdict_path.exists() else {}
    if error:
        status, summary = "fail", error
    elif verdict:
        status, summary = verdict["status"], verdict["summary"]
    else:
        status, summary = "warn", "the notebook recorded no verdict"
    return SectionResult(name=name, status=status, summary=summary, seconds=seconds, notebook=target.name,
                         html=page.name if page else "")


