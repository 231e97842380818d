"""The papermill runner: executes the runbook notebooks in order into one run folder and writes its index.html."""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat
import papermill
from jupyter_client.manager import AsyncKernelManager
from nbconvert import HTMLExporter

from runbook_lib import exceptions, progress
from runbook_lib.cluster.lock import LOCK_KEY, RUN_ID_ENV, RunLock, new_run_id
from runbook_lib.config import known_secrets, load_params
from runbook_lib.exceptions import BadInput, RunLocked
from runbook_lib.run import audit, verdict_table
from runbook_lib.run.audit import RESULTS_DIR
from runbook_lib.run.inputs import check_targets
from runbook_lib.watch.acceptance import ACCEPTANCE_FILE
from runbook_lib.watch.journal_progress import follow
from runbook_lib.watch.watchers import stop_all

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
ROLLBACK = "90_rollback"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


class LocalKernelManager(AsyncKernelManager):
    """Kernels talk over local IPC sockets, not TCP: nothing listens on the network while a run executes.

    Each kernel's sockets live in a folder of their own (mode 0700, under the temp dir), removed when the kernel
    stops: jupyter_client's default, `kernel-ipc-<n>` in the working directory (papermill's cwd, notebooks/), is
    shared by every run from the same checkout, and two runs starting together picked the same sockets (a kernel then
    failed with "Invalid Signature")."""

    transport = "ipc"

    def _ip_default(self) -> str:
        return str(Path(tempfile.mkdtemp(prefix="runbook-kernel-")) / "ipc")

    def cleanup_ipc_files(self) -> None:
        super().cleanup_ipc_files()
        folder = Path(self.ip).parent
        if folder.name.startswith("runbook-kernel-"):
            shutil.rmtree(folder, ignore_errors=True)


@dataclass
class SectionResult:
    """The verdict of one executed notebook."""

    name: str
    status: str
    summary: str
    seconds: float
    notebook: str
    html: str


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


def available(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[str]:
    """Section names in run order (the file names sort in run order)."""
    return sorted(p.stem for p in notebooks_dir.glob("*.ipynb"))


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


def new_run_dir(report_dir: Path) -> Path:
    """A fresh folder named after the UTC time."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir = report_dir / stamp
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = report_dir / f"{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def continued_run_dir(report_dir: Path, given: str | Path | None = None, option: str = "--run-dir") -> Path:
    """The run folder to continue: the one given (it must hold a baseline.json), or the newest under `report_dir`
    whose baseline.json was taken before the expansion, so that a continued run keeps its journal, its lock record
    and the before-picture its verdict compares with. Raises BadInput when there is none; `option` names the
    command-line option that gives one."""
    if given:
        run_dir = Path(given).resolve()
        if not (run_dir / "baseline.json").exists():
            raise BadInput(f"{run_dir} holds no baseline.json; give the folder of a run that passed 00_preflight")
        return run_dir
    runs = sorted((p for p in report_dir.glob("*") if _pre_expansion(p / "baseline.json")),
                  key=lambda p: p.stat().st_mtime)
    if not runs:
        raise BadInput(f"no run folder under {report_dir} has a baseline.json taken before the expansion (00_preflight "
                       f"writes it); give the run folder to continue with {option}")
    return runs[-1]


def _pre_expansion(baseline: Path) -> bool:
    try:
        return bool(json.loads(baseline.read_text()).get("pre_expansion"))
    except (OSError, ValueError, AttributeError):
        return False


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
    run_id = new_run_id()
    existed = continued is not None or (out is not None and Path(out).resolve().exists())
    run_dir = continued or (Path(out).resolve() if out else new_run_dir(params.report_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(params.model.cluster.seed, creds, run_id, "runbook run", str(run_dir)) if params.model.apply else None
    try:
        if lock is not None:
            lock.acquire(take_over=take_over_lock)
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
    os.environ[RUN_ID_ENV] = run_id
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
        released = lock.release() if lock is not None else False
        if lock is not None and not released:
            say(f"warning: the run lock {LOCK_KEY!r} was not ours any more or could not be deleted; it expires by "
                 "itself within a minute")
        record = audit.invocation(
            "runbook run", run_id, params, started, time.time(), exit_code=result.exit_code, stopped=result.stopped,
            sections=[{"name": s.name, "status": s.status, "summary": s.summary, "seconds": round(s.seconds, 2)}
                      for s in result.sections],
            lock={"held": lock is not None, "key": LOCK_KEY if lock else "",
                  "taken_over_from": lock.taken_over.describe() if lock and lock.taken_over else ""})
        stopped = stop_all(run_dir)
        if stopped:
            say(f"stopped the run's {' and '.join(stopped)}")
        audit.record(run_dir, params, record, known_secrets())
        write_index(result, available(notebooks_dir))
        sealed = audit.finish(run_dir, run_id, known_secrets())
        result.manifest_sha256 = sealed["manifest_sha256"]
        if sealed["scrubbed"] or sealed["binary"]:
            say(f"warning: the password appeared in {sealed['scrubbed'] + sealed['binary']} and was redacted where "
                 "possible; this is a bug, please report it")
        say(f"report: {run_dir / 'index.html'}")
        say(f"manifest: {sealed['manifest']} (sha256 {sealed['manifest_sha256']}; `runbook verify-report {run_dir}`)")
    return result


def seal_folder(run_dir: Path, params, command: str, run_id: str, started: float) -> dict:
    """Seal a folder no runner sealed (a run stepped through by hand, `runbook seal`): stop its watchers, write
    index.html from the verdicts recorded, provenance and the params copy, then the manifest last."""
    stop_all(run_dir)
    done = earlier_results(run_dir)
    failed = any(s.status == "fail" for s in done)
    record = audit.invocation(command, run_id, params, started, time.time(), exit_code=1 if failed else 0,
                              sections=[{"name": s.name, "status": s.status, "summary": s.summary,
                                         "seconds": round(s.seconds, 2)} for s in done])
    audit.record(run_dir, params, record, known_secrets())
    write_index(RunResult(run_dir=run_dir), available())
    return audit.finish(run_dir, run_id, known_secrets())


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


def export_html(notebook_path: Path) -> Path:
    """The executed notebook as a standalone HTML page beside it: outputs shown, each code cell collapsed under
    "code" (nbconvert's lab template, extended in templates/runbook), no prompts; the .ipynb keeps everything."""
    nb = nbformat.read(str(notebook_path), as_version=4)
    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATES_DIR)], template_name="runbook",
                            exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    out = notebook_path.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def earlier_results(run_dir: Path) -> list[SectionResult]:
    """Verdicts already recorded in the run folder (sections run by an earlier `--only` or `--from`)."""
    out = []
    for path in sorted((run_dir / RESULTS_DIR).glob("*.json")):
        v = json.loads(path.read_text())
        nb = run_dir / f"{v['section']}.ipynb"
        out.append(SectionResult(name=v["section"], status=v["status"], summary=v["summary"], seconds=v["seconds"],
                                 notebook=nb.name if nb.exists() else "",
                                 html=nb.with_suffix(".html").name if nb.with_suffix(".html").exists() else ""))
    return out


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;width:100%;margin:.5em 0}td,th{border:1px solid #ccc;padding:.4em .6em;text-align:left;
vertical-align:top}caption{text-align:left;font-weight:bold;padding:.3em 0}
.pass{background:#e3f4e1}.warn{background:#fff4d6}.fail{background:#fbe0de}.pending{color:#888}
.headline{font-size:1.3em}img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f4f4f4;padding:0 .2em}"""

VERDICT_CHARTS = {
    "acceptance-latency": "The latency verdict from its own numbers: the baseline p99, the budget the verdict used "
                          "(and the article's +10 % when that differs), the pooled p99 of every request while slots "
                          "moved with its 95 % interval, and the p99 of consecutive groups of those same requests.",
    "slots-before-after": "Slots per master before and after the expansion, against the even share.",
}
CHART_CAPTIONS = {
    "slots-planned": "30_plan: slots per master now and as planned.",
    "batches": "40_migrate: slots moved and seconds taken per batch.",
    "batch-latency": "40_migrate: probe p50/p99 per batch window, gate waits and pauses included, against the budget "
                     "band. Each point holds a whole batch window's few requests; the verdict pools only the requests "
                     "while slots moved (the latency verdict chart above).",
}


def _figure(stem: str, caption: str) -> str:
    return (f'<figure><img src="charts/{html.escape(stem)}.png" alt="{html.escape(stem)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _verdict_source(run_dir: Path) -> str:
    """Where the acceptance table comes from, linked when the files are there."""
    if not (run_dir / f"{verdict_table.VALIDATE}.html").exists():
        return ""
    numbers = (f' (the numbers: <a href="{ACCEPTANCE_FILE}">{ACCEPTANCE_FILE}</a>)'
               if (run_dir / ACCEPTANCE_FILE).exists() else "")
    return f'<p>From <a href="{verdict_table.VALIDATE}.html">{verdict_table.VALIDATE}</a>{numbers}.</p>'


def write_index(result: RunResult, sections: list[str]) -> Path:
    """index.html: the article's acceptance table first with the charts that back it, then one line per section with
    its verdict and links, the other charts, and the run's artifacts."""
    done = {s.name: s for s in earlier_results(result.run_dir)}
    done.update({s.name: s for s in result.sections})
    planned = [n for n in sections if n != ROLLBACK or n in done]
    rows = []
    for name in planned:
        s = done.get(name)
        if s is None:
            rows.append(f'<tr class="pending"><td>{name}</td><td>not run</td><td></td><td></td></tr>')
            continue
        links = " · ".join(f'<a href="{html.escape(f)}">{kind}</a>' for kind, f in (("report", s.html), ("notebook", s.notebook)) if f)
        rows.append(f'<tr class="{s.status}"><td>{name}</td><td>{s.status}</td><td>{html.escape(s.summary)}</td>'
                    f'<td>{links} ({s.seconds:.1f} s)</td></tr>')
    acceptance = verdict_table.rows(*verdict_table.load(result.run_dir))
    headline = verdict_table.overall(acceptance)
    charts_dir = result.run_dir / "charts"
    backing = "".join(_figure(stem, caption) for stem, caption in VERDICT_CHARTS.items()
                      if (charts_dir / f"{stem}.png").exists())
    others = "".join(_figure(c.stem, CHART_CAPTIONS.get(c.stem, c.stem))
                     for c in sorted(charts_dir.glob("*.png")) if c.stem not in VERDICT_CHARTS)
    source = _verdict_source(result.run_dir)
    artifacts = sorted(p for p in result.run_dir.glob("*") if p.suffix in (".json", ".jsonl", ".csv", ".txt", ".yml", ".yaml") or p.is_dir())
    statuses = [done[n].status for n in planned if n in done]
    overall = "FAIL" if "fail" in statuses else ("PASS" if len(statuses) == len(planned) else "INCOMPLETE")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Runbook run {result.run_dir.name}</title>
<style>{_STYLE}</style></head><body>
<h1>Redis Cluster expansion: run {html.escape(result.run_dir.name)}</h1>
<p class="headline">Zero downtime: <strong>{headline}</strong> &mdash; sections: <strong>{overall}</strong>, {len(done)}
of {len(planned)} run.</p>
{verdict_table.to_html(acceptance)}
{source}
{backing}
<h2>Sections</h2>
<table class="sections"><tr><th>section</th><th>verdict</th><th>summary</th><th>executed</th></tr>
{''.join(rows)}</table>
<h2>Other charts</h2>{others or '<p>none</p>'}
<h2>Artifacts</h2><ul>{''.join(f'<li><a href="{html.escape(p.name)}">{html.escape(p.name)}</a></li>' for p in artifacts)}</ul>
<h2>Audit</h2><p>Who ran which code where and when: <a href="provenance.json">provenance.json</a>; the params as
validated, secrets redacted: <a href="params.redacted.yaml">params.redacted.yaml</a>. <a href="manifest.json">manifest.json</a>,
written last, holds the sha256 of every file here: <code>runbook verify-report {html.escape(str(result.run_dir))}</code>
shows any file changed, missing or added since.</p>
</body></html>"""
    path = result.run_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
