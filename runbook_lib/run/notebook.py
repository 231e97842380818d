"""What a runbook notebook needs from the engine: parameter checks, provenance, the run folder, verdicts."""

from __future__ import annotations

import ast
import getpass
import json
import platform
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import pandas as pd
from IPython.display import Image

from runbook_lib import __version__
from runbook_lib.checks import Check, StepReport
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.topology import Topology, nodes_table, observe
from runbook_lib.config import (
    Credentials,
    Params,
    load_params,
    new_master_addresses,
    new_node_addresses,
    replica_pairs,
)
from runbook_lib.exceptions import BadInput, CheckFailed
from runbook_lib.run import interactive
from runbook_lib.run.audit import RESULTS_DIR, git_commit
from runbook_lib.run.confirm import confirm as confirm_cluster
from runbook_lib.run.context import sealed
from runbook_lib.run.inputs import check_seed

__all__ = ["BadInput", "Check", "RESULTS_DIR", "Section", "checks_frame", "open_section", "step_markdown",
           "step_summary"]

PARAMETERS = {"params_file": str, "run_dir": str}
"""The parameters every notebook declares; a notebook may declare more of its own (40_migrate: max_batches)."""
KINDS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
INJECTED = "# Parameters"
"""How papermill's injected-parameters cell begins."""
CHARTS_DIR = "charts"


def _literal_assignments(source: str) -> list[ast.stmt] | None:
    """The statements of a cell made only of `name = literal` or `name: type = literal`, else None."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    for node in body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if not isinstance(target, ast.Name) or node.value is None:
            return None
        try:
            ast.literal_eval(node.value)
        except ValueError:
            return None
    return body or None


def parameter_cells(history: list[str]) -> tuple[dict[str, str], set[str]]:
    """From the cells a kernel ran, oldest first: the parameters the last parameters cell declares (typed literals,
    name -> type name) and the names injected-parameters cells (papermill's, `# Parameters`) set after it (pure).

    Read from the cells, not from the kernel's globals: re-running a cell later finds the notebook's own names there
    (section, topo, checks ...), which are no parameters."""
    declared: dict[str, str] = {}
    injected: set[str] = set()
    for source in history:
        body = _literal_assignments(source)
        if body is None:
            continue
        if all(isinstance(n, ast.AnnAssign) and isinstance(n.annotation, ast.Name) for n in body):
            declared = {n.target.id: n.annotation.id for n in body}
            injected = set()
        elif source.lstrip().startswith(INJECTED):
            injected |= {(n.target if isinstance(n, ast.AnnAssign) else n.targets[0]).id for n in body}
    return declared, injected


def check_parameters(declared: dict[str, str], injected: set[str], namespace: dict) -> dict:
    """Type-check the declared parameters' values in `namespace` and refuse injected names the notebook does not
    declare (papermill only logs them); returns name -> value."""
    if not declared:
        raise BadInput("no parameters cell has run in this kernel: run the cell tagged `parameters` first")
    unknown = sorted(injected - set(declared))
    if unknown:
        raise BadInput(f"unknown notebook parameters {unknown}; the parameters are {sorted(declared)}")
    missing = sorted(set(PARAMETERS) - set(declared))
    if missing:
        raise BadInput(f"the parameters cell must declare {missing}")
    values = {}
    for name, kind in declared.items():
        if name not in namespace:
            raise BadInput(f"notebook parameter {name} is missing")
        value = namespace[name]
        accepted = KINDS.get(kind)
        if accepted is None:
            raise BadInput(f"notebook parameter {name}: type {kind} is not one of {sorted(KINDS)}")
        if not isinstance(value, accepted) or (kind != "bool" and isinstance(value, bool)):
            raise BadInput(f"notebook parameter {name} must be {kind}, got {type(value).__name__} {value!r}")
        values[name] = value
    return values


class Section:
    """One runbook section's context: params, credentials, run folder, journal, and where results go."""

    def __init__(self, name: str, params: Params, run_dir: Path, run: interactive.RunInfo | None = None,
                 parameters: dict | None = None, session: interactive.KernelSession | None = None) -> None:
        self.name = name
        self.params = params
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run = run or interactive.given_run(params, run_dir)
        self.parameters = parameters or {}
        self.session = session or interactive.SESSION
        self.journal = Journal(run_dir / "journal.jsonl")
        self._creds: Credentials | None = None
        self._seed_checked = False
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
    def new_masters(self) -> list[str]:
        """The new masters' addresses, in params order."""
        return new_master_addresses(self.params)

    @property
    def new_replicas(self) -> list[str]:
        """The new masters' replicas' addresses."""
        return [r for r, _ in replica_pairs(self.params)]

    @property
    def new_nodes(self) -> list[str]:
        """Every node the expansion adds: new masters, then their replicas."""
        return new_node_addresses(self.params)

    def nodes_table(self, topo: Topology, new: list[str] | tuple = ()) -> pd.DataFrame:
        """One row per node (address, role, master, slots, flags), the nodes in `new` marked as added by the change."""
        return pd.DataFrame(nodes_table(topo, new))

    @property
    def backup_dir(self) -> Path:
        configured = self.params.model.backup.dir
        return self.params.resolve(configured) if configured else self.run_dir / "backup"

    @property
    def apply(self) -> bool:
        """True when the params allow changes; the cluster identity is checked by `confirm`."""
        return self.params.model.apply

    def observe(self) -> Topology:
        """The live cluster; the first time, through the seed checks `runbook run` makes (unreachable, wrong
        password, not a cluster: a ParamsError naming the params key)."""
        if not self._seed_checked:
            topo = check_seed(self.params, self.creds)
            self._seed_checked = True
            return topo
        return observe(self.seed, self.creds)

    def confirm(self, topo: Topology) -> bool:
        """Whether to act: apply is set and confirm_cluster names this cluster (seed address or seed node id), the rule
        every entry point shares (`runbook_lib.run.confirm.confirm`). When it acts, the params' new nodes are checked
        live and the cluster's run lock is taken until the cell ends, as `runbook run` does."""
        acting = confirm_cluster(self.params, topo)
        if acting:
            self.session.guard(self.params, topo, self.run, self.name)
        return acting

    def provenance(self) -> dict:
        return {"section": self.name, "runbook_lib": __version__, "git_commit": git_commit(),
                "host": platform.node(), "user": getpass.getuser(),
                "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                "params_file": self.params.path.name, "run_dir": str(self.run_dir),
                "run": interactive.describe(self.run), "mode": "apply" if self.apply else "dry run"}

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
        self.session.release()
        if not self.run.headless and (sealed(self.run_dir) or (not failed and self.name in interactive.RUN_ENDS)):
            verdict["sealed"] = str(self.session.seal(self.params, self.run, f"notebook {self.name}")["manifest"])
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


def _history(shell) -> list[str]:
    """The cells this kernel ran, oldest first (IPython's input history)."""
    return [str(source) for source in shell.user_ns.get("In", [])] if shell is not None else []


def open_section(name: str, namespace: dict) -> Section:
    """Check the calling notebook's parameters (as its parameters cell declares them), load its params file, and open
    its run folder: the one given, else the interactive run's (see `runbook_lib.run.interactive`). Re-runnable."""
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is None:
        declared, injected = {k: v.__name__ for k, v in PARAMETERS.items()}, set()
    else:
        declared, injected = parameter_cells(_history(shell))
    values = check_parameters(declared, injected, namespace)
    params = load_params(values["params_file"])
    session = interactive.SESSION
    run = session.run_for(params, values["run_dir"])
    session.hook(shell)
    return Section(name, params, run.run_dir, run=run, parameters=values, session=session)
