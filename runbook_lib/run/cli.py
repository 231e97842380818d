"""The `runbook` command: a thin layer over runbook_lib (exit 0 done, 1 a check failed, 2 bad input)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from runbook_lib import __version__
from runbook_lib.cluster.journal import Journal
from runbook_lib.config import known_secrets, load_params, new_master_addresses
from runbook_lib.exceptions import BadInput, RunbookError
from runbook_lib.run.audit import git_commit, redact

EPILOG = """exit codes: 0 done, 1 a check or gate failed (cluster left consistent), 2 bad input (nothing changed).
Passwords never go on the command line or in params: params name an environment variable (password_env) or a
0600 file (password_file)."""


def _sandbox_up(args) -> int:
    from runbook_lib.sandbox import Sandbox, SandboxLayout
    layout = SandboxLayout(port=args.port, masters=args.masters, replicas=args.replicas, new_masters=args.new_masters)
    sb = Sandbox(args.dir)
    sb.up(layout, keys=args.keys, persistence=args.persistence, progress=not args.quiet, acl=args.acl, tls=args.tls)
    print(f"sandbox up in {sb.root}: masters {layout.master_ports}, replicas {layout.replica_ports}, "
          f"new masters {layout.new_master_ports} and replicas {layout.new_replica_ports} (not joined)")
    print(f"params for it: {sb.root / 'params.yaml'} (the password stays in {sb.password_path}, mode 0600)")
    if args.acl:
        print(f"ACL: the runbook connects as user `runbook` (least rules, `runbook acl`); the default user is off; "
              f"the sandbox's own admin password is in {sb.admin_password_path}")
    if args.tls:
        print(f"TLS only: a throwaway CA and certificates in {sb.root / 'tls'}")
    return 0


def _sandbox_down(args) -> int:
    from runbook_lib.sandbox import Sandbox
    stopped = Sandbox(args.dir).down()
    print(f"stopped {len(stopped)} redis-server processes" + (f" on ports {stopped}" if stopped else ""))
    return 0


def _run(args) -> int:
    from runbook_lib.run.report import run
    result = run(args.params, out=args.out, only=args.only, start=args.start, take_over_lock=args.take_over_lock)
    return result.exit_code


def _verify_report(args) -> int:
    from runbook_lib.run.audit import verify
    result = verify(args.dir)
    for line in result.lines():
        print(line)
    print(f"{result.run_dir}: {result.checked} files in the manifest; "
          + ("all intact" if result.ok else f"{len(result.lines())} problems: the folder changed after its run"))
    return 0 if result.ok else 1


def _acl(args) -> int:
    from runbook_lib.sections.acl import setuser_command
    print(setuser_command(args.user, args.section or None))
    return 0


def _under_lock(name: str, func, acts):
    """Wrap a command that may change the cluster: hold the run lock meanwhile, then re-seal the run folder used."""
    def command(args) -> int:
        from runbook_lib.cluster.lock import holding
        from runbook_lib.run.audit import invocation, seal
        params = load_params(args.params)
        if not acts(args, params):
            return func(args)
        started, code = time.time(), 1
        creds = params.credentials()
        with holding(params.model.cluster.seed, creds, f"runbook {name}", args.take_over_lock) as lock:
            try:
                code = func(args)
            finally:
                try:
                    run_dir = _run_dir(params, args.run_dir)
                except BadInput:
                    run_dir = None
                if run_dir is not None and (run_dir / "manifest.json").exists():
                    seal(run_dir, params, invocation(f"runbook {name}", lock.holder.run_id, params, started,
                                                     time.time(), exit_code=code), known_secrets())
        return code
    return command


def _plan(args) -> int:
    from runbook_lib.cluster.migrate import current_plan
    from runbook_lib.cluster.plan import batch_summary
    from runbook_lib.cluster.topology import names as topology_names
    from runbook_lib.cluster.topology import observe
    params = load_params(args.params)
    creds = params.credentials()
    topo = observe(params.model.cluster.seed, creds)
    plan = current_plan(topo, creds, new_master_addresses(params), params.model.migration, allow_unjoined=True)
    names = topology_names(topo)
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
    from runbook_lib.cluster.topology import observe
    from runbook_lib.sections.validate import balance, health
    params = load_params(args.params)
    topo = observe(params.model.cluster.seed, params.credentials())
    checks = health(topo, pending_replicas=set(new_master_addresses(params))) + [balance(topo)]
    checks[-1].status = "pass" if checks[-1].ok else "warn"
    print(pd.DataFrame([c.__dict__ for c in checks]).to_string(index=False))
    failed = [c for c in checks if c.status == "fail"]
    print("healthy" if not failed else f"UNHEALTHY: {len(failed)} checks failed")
    return 1 if failed else 0


def _run_dir(params, given: str | None) -> Path:
    """The run folder to continue: the one given, or the newest whose baseline was taken before the expansion."""
    if given:
        run_dir = Path(given).resolve()
        if not (run_dir / "baseline.json").exists():
            raise BadInput(f"{run_dir} holds no baseline.json; give the folder of a run that passed 00_preflight")
        return run_dir
    runs = sorted((p for p in params.report_dir.glob("*") if (p / "baseline.json").exists()
                   and json.loads((p / "baseline.json").read_text()).get("pre_expansion")),
                  key=lambda p: p.stat().st_mtime)
    if not runs:
        raise BadInput(f"no run folder under {params.report_dir} has a baseline taken before the expansion; "
                       "give one with --run-dir")
    return runs[-1]


def _resume(args) -> int:
    from runbook_lib.config import new_node_addresses
    from runbook_lib.sections.resume import resume
    params = load_params(args.params)
    run_dir = _run_dir(params, args.run_dir)
    journal = Journal(run_dir / "journal.jsonl")
    last = journal.last("slot_open", "slot_assigned", "migrate_failed", "bigkey_stop", "node_remove")
    print(f"resuming the run in {run_dir}" + (f"; its journal stops at {last['event']} of slot {last.get('slot')} "
                                               f"({last['utc']})" if last else ""))
    out = resume(params.model.cluster.seed, params.credentials(), journal, params.model.migration,
                 new_node_addresses(params) if _phase_is_rollback(journal) else new_master_addresses(params),
                 apply=True, bigkeys=params.model.bigkeys,
                 snapshot=json.loads((run_dir / "baseline.json").read_text()))
    for line in out["repaired"].actions:
        print("repaired " + line)
    moved = sum(b.slots for b in out["batches"])
    print(f"{out['phase']}: " + (f"moved {moved} slots, {sum(b.keys for b in out['batches'])} keys"
                                 if moved else "nothing left to move"))
    return 0


def _phase_is_rollback(journal: Journal) -> bool:
    phase = journal.last("migration_start", "rollback_start")
    return bool(phase) and phase["event"] == "rollback_start"


def _rollback(args) -> int:
    from runbook_lib.cluster.topology import observe
    from runbook_lib.config import new_node_addresses
    from runbook_lib.sections.rollback import rollback
    params = load_params(args.params)
    creds = params.credentials()
    run_dir = _run_dir(params, args.run_dir)
    snapshot = json.loads((run_dir / "baseline.json").read_text())
    topo = observe(params.model.cluster.seed, creds)
    apply = params.model.apply and not args.dry_run
    out = rollback(topo, creds, snapshot, new_node_addresses(params), params.model.migration,
                   Journal(run_dir / "journal.jsonl"), apply=apply, bigkeys=params.model.bigkeys)
    print(f"{'moved' if apply else 'would move'} {len(out['plan'].moves)} slots back to their owners ({run_dir.name})")
    if apply:
        from runbook_lib.watch.lifecycle import discard_probe
        print(f"deleted {discard_probe(params, run_dir)} keys the run's traffic probe had written")
    for line in out["removal"].actions + out["removal"].notes:
        print(("" if apply else "would: ") + line)
    for c in out["checks"]:
        print(f"{c.status:5} {c.name}: {c.detail}")
    return 1 if any(c.status == "fail" for c in out["checks"]) else 0


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
    up.add_argument("--acl", action="store_true",
                    help="default user off; the runbook connects as a least-privilege ACL user `runbook`")
    up.add_argument("--tls", action="store_true",
                    help="TLS only (clients, cluster bus, replication, MIGRATE), with a throwaway CA and certificates")
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
    vr = sub.add_parser("verify-report", help="check a run folder against its sha256 manifest; exit 1 if it changed",
                        description="check a run folder against its sha256 manifest; exit 1 if it changed",
                        epilog=EPILOG)
    vr.add_argument("dir", metavar="DIR", help="the run folder (holding manifest.json)")
    vr.set_defaults(func=_verify_report)
    acl = sub.add_parser("acl", help="print the ACL SETUSER command for the runbook's least-privilege user",
                         description="print the ACL SETUSER command for the runbook's least-privilege user "
                                     "(docs/acl.md explains every rule)", epilog=EPILOG)
    acl.add_argument("--user", default="runbook", help="user name (default runbook)")
    acl.add_argument("--section", action="append", metavar="NAME",
                     help="only the rules these sections need (repeatable; default: every section)")
    acl.set_defaults(func=_acl)
    with_params("plan", "print the slot plan for the live cluster; change nothing", _plan)
    with_params("check", "health: coverage, agreement, open slots, balance; exit 1 if unhealthy", _check)
    res = with_params("resume", "repair open slots (from any tool) and finish an interrupted expansion or rollback",
                      _resume)
    rb = with_params("rollback", "return slots to the owners recorded before the run, then remove the new nodes",
                     _rollback)
    rb.add_argument("--dry-run", action="store_true", help="show what would be done, change nothing")
    for p in (res, rb):
        p.add_argument("--run-dir", help="the run folder whose baseline and journal to use (default: the newest run "
                                         "whose preflight ran before the expansion)")
    res.set_defaults(func=_under_lock("resume", _resume, lambda args, params: True))
    rb.set_defaults(func=_under_lock("rollback", _rollback,
                                     lambda args, params: params.model.apply and not args.dry_run))
    for p in (r, res, rb):
        p.add_argument("--take-over-lock", action="store_true",
                       help="take over the cluster's run lock from a run that is dead (a live run is never overridden)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RunbookError as e:
        print(f"runbook: {redact(str(e), known_secrets())}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("runbook: interrupted; `runbook check` shows the state, `runbook resume` continues", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
