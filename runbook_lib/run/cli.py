"""The `runbook` command: a thin layer over runbook_lib (exit 0 done, 1 a check failed, 2 bad input)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from runbook_lib import __version__
from runbook_lib.acl import setuser_command
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.plan import batch_summary
from runbook_lib.cluster.topology import names as topology_names
from runbook_lib.cluster.topology import observe
from runbook_lib.config import known_secrets, load_params, new_node_addresses
from runbook_lib.exceptions import BadInput, RunbookError
from runbook_lib.run.audit import git_commit, redact, verify
from runbook_lib.run.confirm import confirm
from runbook_lib.run.context import RunContext, continued_run_dir, sealed
from runbook_lib.run.interactive import RUN_RECORD
from runbook_lib.sandbox import VALUES, Sandbox, SandboxLayout
from runbook_lib.sections.plan import current
from runbook_lib.sections.resume import phase, resume
from runbook_lib.sections.rollback import watched_rollback
from runbook_lib.sections.validate import check_now
from runbook_lib.watch import watchers

EPILOG = """exit codes: 0 done, 1 a check or gate failed (cluster left consistent), 2 bad input (nothing changed).
Passwords never go on the command line or in params: params name an environment variable (password_env) or a
0600 file (password_file)."""


SAFEGUARDS = ("With apply: false (or --dry-run) a dry run: it prints exactly what it would do and changes nothing. "
              "With apply: true, confirm_cluster must name the cluster (the seed address, or at least 8 characters "
              "of the seed node id; otherwise exit 2, nothing changed); it holds the cluster's run lock, stops the "
              "watchers an interrupted run left running in its folder, and moves slots under the gates, throttle, "
              "traffic probe and metrics sampler of 40_migrate.")


def _sandbox_up(args) -> int:
    layout = SandboxLayout(port=args.port, masters=args.masters, replicas=args.replicas, new_masters=args.new_masters,
                           hosts=args.hosts, rtt_ms=args.rtt_ms, ipv6=args.ipv6,
                           announce_hostnames=args.announce_hostnames or (args.tls and args.hosts > 1))
    sb = Sandbox(args.dir)
    sb.up(layout, keys=args.keys, persistence=args.persistence, progress=not args.quiet, acl=args.acl, tls=args.tls,
          values=args.values)
    print(f"sandbox up in {sb.root}: masters {layout.master_ports}, replicas {layout.replica_ports}, "
          f"new masters {layout.new_master_ports} and replicas {layout.new_replica_ports} (not joined)")
    print(f"params for it: {sb.root / 'params.yaml'} (the password stays in {sb.password_path}, mode 0600)")
    if args.acl:
        print(f"ACL: the runbook connects as user `runbook` (least rules, `runbook acl`); the default user is off; "
              f"the sandbox's own admin password is in {sb.admin_password_path}")
    if args.tls:
        print(f"TLS only: a throwaway CA and certificates in {sb.root / 'tls'}")
    for h in sb.hosts():
        ports = [p for p in layout.all_ports if layout.host_index(p) == sb.hosts().index(h)]
        print(f"host {h.name} ({h.ip}, network namespace {h.namespace}): ports {ports}")
    if layout.hosts > 1:
        print(f"round trip between hosts: {layout.rtt_ms:g} ms (tc netem)" if layout.rtt_ms else
              "round trip between hosts: not emulated (--rtt-ms 0)")
    return 0


def _sandbox_down(args) -> int:
    sb = Sandbox(args.dir)
    hosts = sb.hosts()
    stopped = sb.down()
    print(f"stopped {len(stopped)} redis-server processes" + (f" on ports {stopped}" if stopped else ""))
    if hosts:
        print(f"removed {len(hosts)} network namespaces ({', '.join(h.namespace for h in hosts)}), their links and "
              "/etc/hosts entries")
    return 0


def _run(args) -> int:
    from runbook_lib.run.runner import run  # papermill and nbconvert: seconds no other command should wait for
    result = run(args.params, out=args.out, only=args.only, start=args.start, take_over_lock=args.take_over_lock)
    return result.exit_code


def _verify_report(args) -> int:
    result = verify(args.dir)
    for line in result.lines():
        print(line)
    print(f"{result.run_dir}: {result.checked} files in the manifest; "
          + ("all intact" if result.ok else f"{len(result.lines())} problems: the folder changed after its run"))
    return 0 if result.ok else 1


def _seal(args) -> int:
    """Seal a run folder by hand: the interactive run it holds ends (the next notebook starts a new one)."""
    run_dir = Path(args.dir).resolve()
    if not (run_dir / "results").is_dir():
        raise BadInput(f"{run_dir} holds no section results (results/); give a run folder")
    record = {}
    for name in (RUN_RECORD, "provenance.json"):
        if (run_dir / name).exists():
            record = json.loads((run_dir / name).read_text())
            break
    params_file = args.params or record.get("params_file")
    if not params_file:
        raise BadInput(f"{run_dir} does not say which params file it ran with; give it with --params")
    params = load_params(params_file)
    started = float(record.get("started") or time.time())
    done = RunContext(params, run_dir, record.get("run_id", ""), started).seal_recorded("runbook seal")
    print(f"sealed {run_dir}: index {run_dir / 'index.html'}, manifest {done['manifest']} (sha256 "
          f"{done['manifest_sha256']}; `runbook verify-report {run_dir}`)")
    return 0


def _acl(args) -> int:
    print(setuser_command(args.user, args.section or None))
    return 0


def _holding_lock(name: str, params, run_dir: Path | None, take_over: bool, work) -> int:
    """Run `work()` (it changes the cluster) holding the cluster's run lock, then re-seal the run folder it used."""
    context, command, code = RunContext(params, run_dir), f"runbook {name}", 1
    with context.holding(command, take_over) as lock:
        if lock.taken_over is not None:
            print(f"took over the stale run lock of {lock.taken_over.describe()}")
        try:
            with context.working():
                code = work()
        finally:
            if run_dir is not None and sealed(run_dir):
                context.reseal(command, code)
    return code


def _guarded(name: str, act):
    """A command that may change the cluster (resume, rollback) with the notebooks' safeguards: the params' apply and
    confirm_cluster decide, before anything else, between a dry run and acting (a wrong cluster exits 2, nothing
    changed); acting holds the run lock. `act(args, params, topo, run_dir, acting)` does the work. The run folder is
    looked up first, but a missing one is reported after the lock, so that a run holding the cluster is named first."""
    def command(args) -> int:
        params = load_params(args.params)
        topo = observe(params.model.cluster.seed, params.credentials())
        acting = confirm(params, topo) and not args.dry_run
        try:
            run_dir, problem = continued_run_dir(params.report_dir, args.run_dir), None
        except BadInput as e:
            run_dir, problem = None, e

        def work() -> int:
            if problem is not None:
                raise problem
            return act(args, params, topo, run_dir, acting)
        if acting:
            return _holding_lock(name, params, run_dir, args.take_over_lock, work)
        if problem is None:
            why = "--dry-run" if args.dry_run else f"apply: false in {params.path.name}"
            print(f"DRY RUN ({why}): nothing is changed; these are the steps it would take. To act, set apply: true "
                  "and confirm_cluster to the seed address (or the seed node id)")
        return work()
    return command


def _plan(args) -> int:
    params = load_params(args.params)
    topo = observe(params.model.cluster.seed, params.credentials())
    plan = current(params, topo)
    if not plan.moves:
        print("the slots are already balanced over the new masters: nothing to move")
        return 0
    _print_plan(plan, topology_names(topo))
    return 0


def _print_plan(plan, names: dict[str, str], prefix: str = "") -> None:
    """Slots per master now and after, then the batches."""
    print(pd.DataFrame([{"master": names.get(i, i), "slots now": plan.before[i], "slots after": plan.after[i]}
                        for i in plan.after]).to_string(index=False))
    print(f"\n{prefix}{len(plan.moves)} slots in {len(plan.batches)} batches, about "
          f"{sum(plan.keys_per_slot.get(m.slot, 0) for m in plan.moves)} keys")
    print(pd.DataFrame(batch_summary(plan, names)).to_string(index=False))


def _check(args) -> int:
    params = load_params(args.params)
    checks = check_now(observe(params.model.cluster.seed, params.credentials()), params)
    print(pd.DataFrame([c.__dict__ for c in checks]).to_string(index=False))
    failed = [c for c in checks if c.status == "fail"]
    print("healthy" if not failed else f"UNHEALTHY: {len(failed)} checks failed")
    return 1 if failed else 0


def _resume_in(args, params, topo, run_dir: Path, acting: bool) -> int:
    """Resume the run in `run_dir`, or say exactly what resuming would do."""
    journal = Journal(run_dir / "journal.jsonl")
    doing = phase(journal)
    last = journal.last("slots_open", "keys_migrated", "slots_handover", "slots_assigned", "migrate_failed",
                        "bigkey_stop", "slot_stop", "node_remove")
    print(f"{'resuming' if acting else 'would resume'} the {doing} of the run in {run_dir}"
          + (f"; its journal stops at {last['event']} of {_slots(_entry_slots(last))} ({last['utc']})" if last else ""))
    asked = set(args.slot or ())
    open_now = {o["slot"] for o in topo.open_slots()}
    for s in sorted(asked - open_now):
        print(f"slot {s} (--slot) is not open: nothing to repair there")
    _leftover_watchers(run_dir, acting)
    try:
        out = resume(params, run_dir, apply=acting, slots=asked or None, foreign=args.foreign,
                     throttle=_pace(params, run_dir, journal) if acting else None)
        for line in out.repaired.actions:
            print(("repaired " if acting else "would repair ") + line)
        notes = list(out.repaired.notes) + [n for n in out.foreign if n not in out.repaired.notes]
        for line in notes:
            print(line)
        if out.blocked:
            one = len(out.blocked) == 1
            print(f"{'stopped' if acting else 'would stop'} before moving any slot: {_slots(out.blocked)} still open (another tool's, not asked "
                  f"for); the {doing} cannot go on while {'it is' if one else 'they are'} open. Check what opened "
                  f"{'it' if one else 'them'} (`runbook check`), then repair with "
                  + " ".join(f"--slot {s}" for s in out.blocked[:5]) + " (or --foreign)")
            return 1 if acting else 0
        if out.waiting:
            if acting:
                code = 1 if out.repaired.actions else 2
                print(f"stopped before moving any slot: {out.waiting}", file=sys.stderr if code == 2 else sys.stdout)
                return code
            print(f"would stop before moving any slot: {out.waiting}; after that it would go on with this plan")
        if not acting:
            return _print_would(out, doing, topo, params)
        moved = sum(b.slots for b in out.batches)
        print(f"{doing}: " + (f"moved {moved} slots, {sum(b.keys for b in out.batches)} keys in "
                              f"{len(out.batches)} batches" if moved else "nothing left to move"))
        return _rolled_back(out.rolled_back) if out.rolled_back is not None else 0
    finally:
        if acting:
            _stop_watch(run_dir)


def _entry_slots(entry: dict) -> list[int]:
    """The slots a journal entry names (one, a list, or a slot -> count map)."""
    slots = entry.get("slots", [entry.get("slot")])
    return [int(s) for s in (slots.keys() if isinstance(slots, dict) else slots) if s is not None]


def _slots(slots: list[int]) -> str:
    return ("slot " if len(slots) == 1 else "slots ") + ", ".join(map(str, slots[:10])) + \
        (f" and {len(slots) - 10} more" if len(slots) > 10 else "")


def _print_would(out, doing: str, topo, params) -> int:
    """What a resume would move (a dry run)."""
    plan = out.plan
    removal = f"remove {', '.join(new_node_addresses(params))} from the cluster"
    if not plan.moves:
        print(f"{doing}: nothing left to move" + (f"; would {removal}" if doing == "rollback" else ""))
        return 0
    _print_plan(plan, topology_names(topo), prefix=f"{doing}: would move ")
    print("each batch would be gated and throttled, watched by the metrics sampler and the traffic probe (when params "
          "enable it)" + (f"; then it would {removal}" if doing == "rollback" else ""))
    return 0


def _leftover_watchers(run_dir: Path, acting: bool) -> None:
    """Stop (or, in a dry run, name) the probe and sampler an interrupted run left running in its folder."""
    line = watchers.stop_leftovers(run_dir, acting)
    if line:
        print(line)


def _pace(params, run_dir: Path, journal: Journal):
    """The watch 40_migrate moves slots under (sampler, probe, baseline, throttle), started before the first batch."""
    return watchers.WatchWhenMoving(params, run_dir, journal,
                                     on_start=lambda watch: print(watchers.watching(watch), flush=True))


def _stop_watch(run_dir: Path) -> None:
    stopped = watchers.stop_all(run_dir)
    if stopped:
        print(f"stopped the {' and '.join(stopped)} started for this command")


def _rolled_back(out) -> int:
    """The end of a rollback, `runbook rollback`'s or a resumed one's: the probe's keys deleted, the new nodes removed,
    the checks of the restored layout (exit 1 when one failed)."""
    print(f"deleted {out.probe_keys} keys the run's traffic probe had written")
    if out.stopped:
        print(f"stopped the {' and '.join(out.stopped)} started for this command")
    for line in out.removal.actions + out.removal.notes:
        print(line)
    for c in out.checks:
        print(f"{c.status:5} {c.name}: {c.detail}")
    return 1 if out.failed else 0


def _rollback_in(args, params, topo, run_dir: Path, acting: bool) -> int:
    """Roll back to the run's before-picture (the path 90_rollback takes too), or say exactly what it would do."""
    journal = Journal(run_dir / "journal.jsonl")
    print(f"{'rolling back' if acting else 'would roll back'} to the layout recorded in {run_dir / 'baseline.json'}")
    out = watched_rollback(params, run_dir, topo, journal, apply=acting, tell=lambda line: print(line, flush=True))
    if not acting:
        plan = out.plan
        if plan.moves:
            _print_plan(plan, topology_names(topo), prefix="would move back ")
        else:
            print("no slot to move back")
        for line in out.removal.actions:
            print("would: " + line)
        for line in out.removal.notes:
            print(line)
        return 0
    print(f"moved {len(out.plan.moves)} slots back to their owners ({run_dir.name}) in "
          f"{len(out.batches)} batches")
    return _rolled_back(out)


def _slot(text: str) -> int:
    try:
        slot = int(text)
    except ValueError:
        slot = -1
    if not 0 <= slot < 16384:
        raise argparse.ArgumentTypeError(f"{text!r} is not a slot number (0-16383)")
    return slot


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
    up.add_argument("--values", choices=VALUES, default="mixed",
                    help="the data's profile: mixed (default; strings up to 4 KiB, collections up to 30 members, "
                         "about 1000 bytes a key) or small (strings up to 64 bytes, collections up to 5, about 150 "
                         "bytes a key: tens of millions of keys on one machine). Each node's maxmemory is sized from "
                         "the keys, and a sandbox this host cannot hold is refused before it starts")
    up.add_argument("--persistence", action="store_true", help="enable AOF and RDB saves (off by default)")
    up.add_argument("--quiet", action="store_true", help="no progress bar")
    up.add_argument("--acl", action="store_true",
                    help="default user off; the runbook connects as a least-privilege ACL user `runbook`")
    up.add_argument("--tls", action="store_true",
                    help="TLS only (clients, cluster bus, replication, MIGRATE), with a throwaway CA and certificates")
    up.add_argument("--hosts", type=int, default=1,
                    help="emulated hosts (default 1: everything on 127.0.0.1); more put the nodes, in turn, on that "
                         "many network namespaces with their own address and host name (needs root)")
    up.add_argument("--rtt-ms", type=float, default=0.0,
                    help="round-trip time between hosts, emulated with tc netem (default 0; needs --hosts 2+)")
    up.add_argument("--ipv6", action="store_true", help="the hosts get IPv6 addresses (needs --hosts 2+)")
    up.add_argument("--announce-hostnames", action="store_true",
                    help="nodes announce their host names and send clients there (cluster-announce-hostname, "
                         "cluster-preferred-endpoint-type hostname); on with --tls --hosts 2+, whose "
                         "certificates name hosts only")
    up.set_defaults(func=_sandbox_up)
    down = ssub.add_parser("down", help="stop exactly this sandbox's redis-server processes and remove the network "
                                        "namespaces, links and host names it made")
    down.add_argument("--dir", default=".sandbox", help="sandbox folder (default .sandbox)")
    down.set_defaults(func=_sandbox_down)

    def with_params(name: str, help_text: str, func, description: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description or help_text, epilog=EPILOG)
        p.add_argument("--params", required=True, help="params YAML file (see params/production.example.yaml)")
        p.set_defaults(func=func)
        return p

    r = with_params("run", "execute the notebooks 00-70 in order with papermill into a new report folder", _run,
                    "execute the notebooks 00-70 in order with papermill into a new report folder (with --from, into "
                    "the folder of the run it continues)")
    r.add_argument("--out", help="run folder (default: <report.dir>/<UTC timestamp>)")
    r.add_argument("--only", metavar="NAME", help="run one section, e.g. 30_plan or 90_rollback")
    r.add_argument("--from", dest="start", metavar="NAME",
                   help="start at this section, continuing an earlier run's folder (its journal and baseline): the "
                        "one given with --out, else the newest under report.dir whose baseline was taken before the "
                        "expansion (exit 2 when there is none)")
    vr = sub.add_parser("verify-report", help="check a run folder against its sha256 manifest; exit 1 if it changed",
                        description="check a run folder against its sha256 manifest; exit 1 if it changed",
                        epilog=EPILOG)
    vr.add_argument("dir", metavar="DIR", help="the run folder (holding manifest.json)")
    vr.set_defaults(func=_verify_report)
    seal = sub.add_parser("seal", help="end a run stepped through by hand: index, provenance and manifest; watchers "
                                       "stopped", description="seal a run folder: stop its traffic probe and metrics "
                          "sampler, write index.html, provenance.json, params.redacted.yaml and, last, manifest.json "
                          "(as `runbook run` does at its end). The interactive run it holds ends: the next notebook "
                          "opened without run_dir starts a new run folder.", epilog=EPILOG)
    seal.add_argument("dir", metavar="DIR", help="the run folder")
    seal.add_argument("--params", help="params file (default: the one the run folder records)")
    seal.set_defaults(func=_seal)
    acl = sub.add_parser("acl", help="print the ACL SETUSER command for the runbook's least-privilege user",
                         description="print the ACL SETUSER command for the runbook's least-privilege user "
                                     "(docs/acl.md explains every rule)", epilog=EPILOG)
    acl.add_argument("--user", default="runbook", help="user name (default runbook)")
    acl.add_argument("--section", action="append", metavar="NAME",
                     help="only the rules these sections need (repeatable; default: every section)")
    acl.set_defaults(func=_acl)
    with_params("plan", "print the slot plan for the live cluster; change nothing", _plan)
    with_params("check", "health: coverage, agreement, open slots, balance; exit 1 if unhealthy", _check)
    res = with_params("resume", "repair this run's open slots and finish its interrupted expansion or rollback",
                      _guarded("resume", _resume_in), "repair the open slots an interrupted run left and finish its expansion or rollback. "
                      + SAFEGUARDS + " Another tool's open slot (redis-cli, an operator) is described and left alone "
                      "unless named with --slot or --foreign; nothing moves while one is open.")
    res.add_argument("--slot", type=_slot, action="append", metavar="N",
                     help="also repair slot N when another tool (redis-cli, an operator) left it open; repeatable. "
                          "Without it such a slot is described and left alone, and nothing moves while it is open")
    res.add_argument("--foreign", action="store_true",
                     help="repair every open slot, whichever tool opened it (see `runbook check` first)")
    rb = with_params("rollback", "return slots to the owners recorded before the run, then remove the new nodes",
                     _guarded("rollback", _rollback_in), "return every slot to the owner recorded in the run's baseline.json (taken before "
                     "the expansion), then remove the new nodes. " + SAFEGUARDS + " The traffic probe's keys are "
                     "deleted at the end, as 90_rollback does.")
    for p in (res, rb):
        p.add_argument("--run-dir", help="the run folder whose baseline and journal to use (default: the newest run "
                                         "whose preflight ran before the expansion)")
        p.add_argument("--dry-run", action="store_true",
                       help="show what would be done and change nothing, even with apply: true")
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
