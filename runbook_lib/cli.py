"""The `runbook` command: a thin layer over runbook_lib (exit 0 done, 1 a check failed, 2 bad input)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from . import __version__
from .config import load_params, new_master_addresses
from .exceptions import BadInput, RunbookError
from .journal import Journal
from .notebook import git_commit

EPILOG = """exit codes: 0 done, 1 a check or gate failed (cluster left consistent), 2 bad input (nothing changed).
Passwords never go on the command line or in params: params name an environment variable (password_env) or a
0600 file (password_file)."""


def _sandbox_up(args) -> int:
    from .sandbox import Sandbox, SandboxLayout
    layout = SandboxLayout(port=args.port, masters=args.masters, replicas=args.replicas, new_masters=args.new_masters)
    sb = Sandbox(args.dir)
    sb.up(layout, keys=args.keys, persistence=args.persistence, progress=not args.quiet)
    print(f"sandbox up in {sb.root}: masters {layout.master_ports}, replicas {layout.replica_ports}, "
          f"new masters {layout.new_master_ports} and replicas {layout.new_replica_ports} (not joined)")
    print(f"params for it: {sb.root / 'params.yaml'} (the password stays in {sb.password_path}, mode 0600)")
    return 0


def _sandbox_down(args) -> int:
    from .sandbox import Sandbox
    stopped = Sandbox(args.dir).down()
    print(f"stopped {len(stopped)} redis-server processes" + (f" on ports {stopped}" if stopped else ""))
    return 0


def _run(args) -> int:
    from .report import run
    result = run(args.params, out=args.out, only=args.only, start=args.start)
    return result.exit_code


def _names(topo) -> dict[str, str]:
    return {e.id: e.address for e in topo.nodes.values()}


def _plan(args) -> int:
    from .migrate import current_plan
    from .plan import batch_summary
    from .topology import observe
    params = load_params(args.params)
    creds = params.credentials()
    topo = observe(params.model.cluster.seed, creds)
    plan = current_plan(topo, creds, new_master_addresses(params), params.model.migration, allow_unjoined=True)
    names = _names(topo)
    if not plan.moves:
        print("the slots are already balanced over the new masters: nothing to move")
        return 0
    print(pd.DataFrame([{"master": names.get(i, i), "slots now": plan.before[i], "slots after": plan.after[i]}
                        for i in plan.after]).to_string(index=False))
    print(f"\n{len(plan.moves)} slots in {len(plan.batches)} batches, about "
          f"{sum(plan.keys_per_slot.get(m.slot, 0) for m in plan.moves)} keys")
    print(pd.DataFrame(batch_summary(plan, names)).to_string(index=False))
    return 0


def _check(args) -> int:
    from .topology import observe
    from .validate import balance, health
    params = load_params(args.params)
    topo = observe(params.model.cluster.seed, params.credentials())
    checks = health(topo, pending_replicas=set(new_master_addresses(params))) + [balance(topo)]
    checks[-1].status = "pass" if checks[-1].ok else "warn"
    print(pd.DataFrame([c.__dict__ for c in checks]).to_string(index=False))
    failed = [c for c in checks if c.status == "fail"]
    print("healthy" if not failed else f"UNHEALTHY: {len(failed)} checks failed")
    return 1 if failed else 0


def _latest_run(params) -> Path:
    runs = sorted((p for p in params.report_dir.glob("*") if (p / "baseline.json").exists()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise BadInput(f"no run folder with baseline.json under {params.report_dir}; run 00_preflight first")
    return runs[-1]


def _resume(args) -> int:
    from .migrate import migrate
    from .topology import observe
    params = load_params(args.params)
    creds = params.credentials()
    run_dir = _latest_run(params)
    topo = observe(params.model.cluster.seed, creds)
    plan, results = migrate(topo, creds, new_master_addresses(params), params.model.migration,
                            Journal(run_dir / "journal.jsonl"))
    print(f"resumed in {run_dir}: " + (f"moved {sum(r.slots for r in results)} slots, {sum(r.keys for r in results)} keys"
                                        if results else "nothing left to move"))
    return 0


def _rollback(args) -> int:
    from .rollback import rollback
    from .preflight import new_node_addresses
    from .topology import observe
    params = load_params(args.params)
    creds = params.credentials()
    run_dir = _latest_run(params)
    snapshot = json.loads((run_dir / "baseline.json").read_text())
    topo = observe(params.model.cluster.seed, creds)
    apply = params.model.apply and not args.dry_run
    out = rollback(topo, creds, snapshot, new_node_addresses(params), params.model.migration,
                   Journal(run_dir / "journal.jsonl"), apply=apply)
    print(f"{'moved' if apply else 'would move'} {len(out['plan'].moves)} slots back to their owners in {run_dir.name}")
    for line in out["removal"].actions + out["removal"].notes:
        print(("" if apply else "would: ") + line)
    failed = [c for c in out["checks"] if c.status == "fail"]
    for c in out["checks"]:
        print(f"{c.status:5} {c.name}: {c.detail}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runbook", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Grow a live Redis Cluster with zero downtime, step by audited step.")
    parser.add_argument("--version", action="version", version=f"runbook {__version__} ({git_commit()})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sandbox = sub.add_parser("sandbox", help="a real local cluster with data for demos and tests")
    ssub = sandbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = ssub.add_parser("up", help="start masters + replicas with data, and the new nodes unjoined")
    up.add_argument("--dir", default=".sandbox", help="sandbox folder (default .sandbox)")
    up.add_argument("--port", type=int, default=7000, help="first port; nodes use consecutive ports (default 7000)")
    up.add_argument("--masters", type=int, default=3, help="existing masters (default 3)")
    up.add_argument("--replicas", type=int, default=1, help="replicas per existing master (default 1)")
    up.add_argument("--new-masters", type=int, default=1, help="new masters to add, each with a replica (default 1)")
    up.add_argument("--keys", type=int, default=200_000, help="keys of mixed types to load (default 200000)")
    up.add_argument("--persistence", action="store_true", help="enable AOF and RDB saves (off by default)")
    up.add_argument("--quiet", action="store_true", help="no progress bar")
    up.set_defaults(func=_sandbox_up)
    down = ssub.add_parser("down", help="stop exactly this sandbox's redis-server processes")
    down.add_argument("--dir", default=".sandbox", help="sandbox folder (default .sandbox)")
    down.set_defaults(func=_sandbox_down)

    def with_params(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG)
        p.add_argument("--params", required=True, help="params YAML file (see params/production.example.yaml)")
        p.set_defaults(func=func)
        return p

    r = with_params("run", "execute the notebooks 00-70 in order with papermill into a new report folder", _run)
    r.add_argument("--out", help="run folder (default: <report.dir>/<UTC timestamp>)")
    r.add_argument("--only", metavar="NAME", help="run one section, e.g. 30_plan or 90_rollback")
    r.add_argument("--from", dest="start", metavar="NAME", help="start at this section")
    with_params("plan", "print the slot plan for the live cluster; change nothing", _plan)
    with_params("check", "health: coverage, agreement, open slots, balance; exit 1 if unhealthy", _check)
    with_params("resume", "finish an interrupted migration from the live state and the latest run's journal", _resume)
    rb = with_params("rollback", "return slots to the owners recorded before the run, then remove the new nodes",
                     _rollback)
    rb.add_argument("--dry-run", action="store_true", help="show what would be done, change nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RunbookError as e:
        print(f"runbook: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("runbook: interrupted; `runbook check` shows the state, `runbook resume` continues", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
