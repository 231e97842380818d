"""What a runbook notebook needs from the engine: parameter checks, provenance, the run folder, verdicts."""

from __future__ import annotations

import getpass
import json
import platform
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

from IPython.display import Image

from runbook_lib import __version__
from runbook_lib.checks import Check, StepReport
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.topology import Topology, observe
from runbook_lib.config import Credentials, Params, load_params
from runbook_lib.exceptions import BadInput, CheckFailed
from runbook_lib.run.audit import git_commit
from runbook_lib.run.confirm import confirm as confirm_cluster

__all__ = ["BadInput", "Check", "Section", "checks_frame", "open_section", "step_markdown", "step_summary"]

PARAMETERS = {"params_file": str, "run_dir": str}
RESULTS_DIR = "results"
CHARTS_DIR = "charts"


def check_parameters(namespace: dict, hidden: set[str]) -> dict:
    """Type-check the notebook's parameters and refuse names papermill injected that the notebook does not know."""
    user = {k: v for k, v in namespace.items() if not k.startswith("_") and k not in hidden}
    unknown = sorted(set(user) - set(PARAMETERS))
    if unknown:
        raise BadInput(f"unknown notebook parameters {unknown}; the parameters are {sorted(PARAMETERS)}")
    for name, kind in PARAMETERS.items():
        if name not in user:
            raise BadInput(f"notebook parameter {name} is missing")
        if not isinstance(user[name], kind):
            raise BadInput(f"notebook parameter {name} must be {kind.__name__}, got {type(user[name]).__name__} "
                           f"{user[name]!r}")
    return {k: user[k] for k in PARAMETERS}


class Section:
    """One runbook section's context: params, credentials, run folder, journal, and where results go."""

    def __init__(self, name: str, params: Params, run_dir: Path) -> None:
        self.name = name
        self.params = params
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(run_dir / "journal.jsonl")
        self._creds: Credentials | None = None
        self.started = time.time()

    @property
    def creds(self) -> Credentials:
        if self._creds is None:
            self._creds = self.params.credentials()
        return self._creds

    @property
    def seed(self) -> str:
        return self.params.model.cluster.seed

    @property
    def backup_dir(self) -> Path:
        configured = self.params.model.backup.dir
        return self.params.resolve(configured) if configured else self.run_dir / "backup"

    @property
    def apply(self) -> bool:
        """True when the params allow changes; the cluster identity is checked by `confirm`."""
        return self.params.model.apply

    def observe(self) -> Topology:
        return observe(self.seed, self.creds)

    def confirm(self, topo: Topology) -> bool:
        """Whether to act: apply is set and confirm_cluster names this cluster (seed address or seed node id);
        the rule every entry point shares, `runbook_lib.run.confirm.confirm`."""
        return confirm_cluster(self.params, topo)

    def provenance(self) -> dict:
        return {"section": self.name, "runbook_lib": __version__, "git_commit": git_commit(),
                "host": platform.node(), "user": getpass.getuser(),
                "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                "params_file": self.params.path.name, "run_dir": str(self.run_dir),
                "mode": "apply" if self.apply else "dry run"}

    def save_json(self, name: str, data) -> Path:
        """Write a result other steps and tests read (never scraped from outputs)."""
        path = self.run_dir / name
        path.write_text(json.dumps(_plain(data), indent=2, default=str))
        return path

    def load_json(self, name: str, required: bool = True):
        path = self.run_dir / name
        if not path.exists():
            if required:
                raise BadInput(f"{path} is missing; run the section that writes it first (same run_dir)")
            return None
        return json.loads(path.read_text())

    def keep_baseline(self, data: dict) -> dict:
        """Write baseline.json once per run folder and return what it holds (the first picture wins)."""
        existing = self.load_json("baseline.json", required=False)
        if existing is not None:
            return existing
        self.save_json("baseline.json", data)
        return data

    def save_figure(self, fig, name: str) -> Image:
        """Save a chart as PNG in the run's charts folder and return that PNG for display: it shows under the cell
        whatever matplotlib backend the kernel has (a bare Figure shows as `<Figure size ...>` without the inline one),
        and the notebook shows exactly the file the report links."""
        folder = self.run_dir / CHARTS_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return Image(data=path.read_bytes(), format="png", alt=f"chart {name} (charts/{path.name})")

    def finish(self, checks: list | None = None, summary: str = "") -> "Verdict":
        """Record this section's verdict in results/<section>.json and return it (it shows as one line under the
        cell); raise CheckFailed when any check failed, so `runbook run` stops, naming each failed check and why."""
        rows = [_plain(c) for c in (checks or [])]
        failed = [r for r in rows if r.get("status") == "fail"]
        warned = [r for r in rows if r.get("status") == "warn"]
        status = "fail" if failed else ("warn" if warned else "pass")
        if failed:
            summary = (f"{len(failed)} of {len(rows)} checks failed: "
                       + "; ".join(f"{r['name']} ({r['detail']})" if r.get("detail") else r["name"] for r in failed))
        elif not summary:
            summary = f"{len(rows)} checks, {len(warned)} warnings"
        verdict = Verdict({"section": self.name, "status": status, "summary": summary, "checks": rows,
                           "seconds": round(time.time() - self.started, 2), **self.provenance()})
        folder = self.run_dir / RESULTS_DIR
        folder.mkdir(exist_ok=True)
        (folder / f"{self.name}.json").write_text(json.dumps(verdict, indent=2, default=str))
        if failed:
            raise CheckFailed(f"{self.name}: {summary}")
        return verdict


class Verdict(dict):
    """A section's recorded verdict (the dict written to results/<section>.json) that a notebook shows as one line,
    its status, summary and where the full record is, instead of the whole dict."""

    def _repr_markdown_(self) -> str:
        counts = {s: sum(1 for c in self["checks"] if c.get("status") == s) for s in ("pass", "warn", "fail")}
        return (f"**{self['section']}: {self['status'].upper()}** ({self['summary']}); "
                f"{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed; "
                f"recorded in `{RESULTS_DIR}/{self['section']}.json`")

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(f"{self['section']}: {self['status']} ({self['summary']})")


def step_markdown(step: StepReport, applied: bool) -> str:
    """What a reconciling step did (or would do, in a dry run), as Markdown."""
    if step.nothing_to_do:
        lines = ["**Nothing to do.**"]
    else:
        lines = ["**Done:**" if applied else "**Dry run, would send:**"] + [f"- `{a}`" for a in step.actions]
    return "\n".join(lines + [f"- {n}" for n in step.notes])


def step_summary(step: StepReport, applied: bool) -> str:
    if step.nothing_to_do:
        return "nothing to do"
    return f"{len(step.actions)} actions {'done' if applied else 'planned (dry run)'}"


def checks_frame(checks: list):
    """Checks as a pandas table coloured by status, for display in a notebook."""
    import pandas as pd
    colours = {"pass": "background-color:#e3f4e1", "warn": "background-color:#fff4d6",
               "fail": "background-color:#fbe0de"}
    frame = pd.DataFrame([_plain(c) for c in checks], columns=["name", "status", "detail"])
    return frame.style.apply(lambda row: [colours.get(row["status"], "")] * len(row), axis=1).hide(axis="index")


def _plain(obj):
    if is_dataclass(obj):
        return asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def default_run_dir(params: Params) -> Path:
    """Where a notebook stepped through by hand writes: one folder per UTC day under the report folder."""
    return params.report_dir / time.strftime("interactive-%Y%m%d", time.gmtime())


def open_section(name: str, namespace: dict) -> Section:
    """Check the parameters of the calling notebook, load its params file, and open its run folder."""
    try:
        from IPython import get_ipython
        shell = get_ipython()
        hidden = set(shell.user_ns_hidden) if shell is not None else set()
    except ImportError:
        hidden = set()
    values = check_parameters({k: v for k, v in namespace.items() if not callable(v) and not _is_module(v)}, hidden)
    params = load_params(values["params_file"])
    run_dir = Path(values["run_dir"]).resolve() if values["run_dir"] else default_run_dir(params)
    return Section(name, params, run_dir)


def _is_module(value) -> bool:
    return type(value).__name__ == "module"
