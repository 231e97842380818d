"""40_migrate's migration in a process of its own, for the fault matrix (tests/integration/test_fault_matrix.py).

    python -m tests.integration.matrix_run --params P --run-dir D [--max-batches N]
           [--kill-master ADDRESS --pid PID --replica ADDRESS --at POINT[:N]]

It does what the 40_migrate notebook's cell does with `apply: true`: `migration.run` (sampler, probe
when params enable it, latency baseline, the pace of params) on the run folder's journal, at most N batches. With
RUNBOOK_FAILPOINT set by the caller it dies by SIGKILL at that point (exit status -9), like a power cut.

With --kill-master, RUNBOOK_FAILPOINT is ignored and the point named by --at SIGKILLs that master instead, the
migration going on: its writes are paused first and the kill waits until its replica has every write the master
acknowledged, so the replica that takes over holds what clients were told was written (Redis replicates
asynchronously; a write lost to that is not what the matrix tests). Exit 0 when the migration finished, 1 when it
stopped (MigrationError, CheckFailed, ...), with the error on stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def pause_and_kill(address: str, replica: str, pid: int, creds, timeout: float = 10.0) -> None:
    """CLIENT PAUSE WRITE on the master, wait until its replica's offset reaches the master's, then SIGKILL it."""
    from runbook_lib.cluster.connection import node_client
    master = node_client(address, creds)
    master.execute_command("CLIENT", "PAUSE", int(timeout * 1000) + 5000, "WRITE")
    deadline = time.time() + timeout
    while time.time() < deadline:
        offset = master.info("replication")["master_repl_offset"]
        if node_client(replica, creds).info("replication").get("slave_repl_offset", -1) >= offset:
            break
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    print(f"matrix_run: killed master {address} (pid {pid}) with its replica {replica} caught up", file=sys.stderr)


def install_master_killer(point: str, kill) -> None:
    """Replace `failpoint` wherever runbook_lib imported it: the Nth hit of `point` ("name" or "name:N") calls
    `kill()` once and the run goes on; every other point does nothing."""
    import runbook_lib.cluster.journal as journal
    name, _, nth = point.partition(":")
    wanted = int(nth or 1)
    hits = {"n": 0, "done": False}
    original = journal.failpoint

    def hook(where: str) -> None:
        if where != name or hits["done"]:
            return
        hits["n"] += 1
        if hits["n"] >= wanted:
            hits["done"] = True
            kill()

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("runbook_lib") and getattr(module, "failpoint", None) is original:
            module.failpoint = hook


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="matrix_run")
    ap.add_argument("--params", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--max-batches", type=int, default=0)
    ap.add_argument("--kill-master")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--replica")
    ap.add_argument("--at")
    args = ap.parse_args(argv)

    # every module that calls failpoint is loaded before the hook goes in
    from runbook_lib.cluster import migrate, mover, repair, rounds, slots, transitions  # noqa: F401
    from runbook_lib.cluster.journal import Journal
    from runbook_lib.cluster.topology import observe
    from runbook_lib.config import load_params
    from runbook_lib.sections import migration
    from runbook_lib.watch import watchers

    params = load_params(args.params)
    creds = params.credentials()
    run_dir = Path(args.run_dir)
    if args.kill_master:
        os.environ.pop("RUNBOOK_FAILPOINT", None)
        install_master_killer(args.at, lambda: pause_and_kill(args.kill_master, args.replica, args.pid, creds))
    journal = Journal(run_dir / "journal.jsonl")
    topo = observe(params.model.cluster.seed, creds)
    try:
        done = migration.run(params, run_dir, topo, journal, apply=True, progress=False,
                             max_batches=args.max_batches or None)
    except Exception as e:  # the run stopped: say why, like the notebook's failed cell
        print(f"matrix_run: stopped: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        watchers.stop_all(run_dir)
    print(f"matrix_run: moved {sum(b.slots for b in done.batches)} of {len(done.plan.moves)} slots, "
          f"{sum(b.keys for b in done.batches)} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
