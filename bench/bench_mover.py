"""Benchmark: our budget pace against hand-tuned fixed rates and redis-cli on the same sandbox, data and probe.

Each configuration gets a fresh 3+3 sandbox with the same deterministic keys, joins the new master and attaches its
replica the same way (the replica before any slot moves, as the runbook's 25_add_replicas does), runs the traffic
probe (patched and stock redis-py workers) and the node sampler, and times only the slot moves:

- `budget`: our default preset, the governor holding the clients' p99 within `--budget-pct` of the baseline;
- `fixed-R`: the sweep an SRE would do by hand, our mover at a fixed R slots/s (preset gentle's one slot at a time);
- `redis-cli rebalance`: `redis-cli --cluster rebalance --cluster-use-empty-masters` (it moves everything);
- `redis-cli reshard x100`: the article's method 2, `redis-cli --cluster reshard` of 100 slots per batch from each
  old master in turn, with `--pause-s` between batches.

Our configurations and the reshard move the first `--slots` slots of the plan (the same slots for every
configuration), so that a slow fixed rate finishes in minutes; keys/s compares rates, not totals. The baseline is the
probe's latency at rest, pooled from a window before the move and one after it. Prints, per configuration: slots
and keys moved, keys/s, the p99 ratio during the move with its 95 % bootstrap interval and the verdict against
`--budget-pct` (pass, fail, inconclusive), failed requests (stock redis-py workers and the patched ones) and lost
writes; then whether the budget pace passed and its keys/s against the best fixed rate that passed.
Run: .venv/bin/python bench/bench_mover.py [--keys 200000] [--slots 512] [--rates 2.5,5,10,20] [--budget-pct 10]
     [--only budget,redis-cli rebalance] [--hosts 4 --rtt-ms 0.5]
With --hosts N the sandbox spreads its nodes over N network namespaces (root, iproute2), --rtt-ms apart (tc netem).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import current_plan
from runbook_lib.cluster.mover import Mover
from runbook_lib.cluster.topology import observe
from runbook_lib.config import BigKeys, Gates, Migration
from runbook_lib.exceptions import PaceStop, SandboxError
from runbook_lib.sandbox import Sandbox, SandboxLayout, redis_binary
from runbook_lib.sections import nodes
from runbook_lib.sections.validate import health, key_count
from runbook_lib.watch.pace import governor
from runbook_lib.watch.probe import TrafficProbe
from runbook_lib.watch.probe_stats import latency_stats
from runbook_lib.watch.sampler import Sampler
from runbook_lib.watch.verdict import latency_verdict, p99_ratio_interval

RESHARD_BATCH = 100


def budget_settings() -> Migration:
    return Migration(preset="budget")


def fixed_settings(rate: float) -> Migration:
    return Migration(preset="gentle", max_slots_per_s=rate)


def _redis_cli(creds, *args: str) -> None:
    env = {**os.environ, "REDISCLI_AUTH": creds.password}
    proc = subprocess.run([redis_binary("redis-cli"), "--cluster", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"redis-cli {args[0]} failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")


def move_ours(seed: str, creds, new: str, settings: Migration, journal: Journal, run_dir: Path, slots: int,
              budget_pct: float, baseline: dict) -> int:
    """Our mover over the first `slots` slots of the plan, under the budget governor or at a fixed rate."""
    topo = observe(seed, creds)
    plan = current_plan(topo, creds, [new], settings)
    moves = plan.moves[:slots]
    plan.batches = [moves[i: i + settings.slots_per_batch] for i in range(0, len(moves), settings.slots_per_batch)]
    pace = None
    if settings.pace == "budget":
        pace = governor(settings, Gates(latency_budget_pct=budget_pct), run_dir, journal, baseline)
    try:
        results = Mover(topo, creds, settings, journal, BigKeys()).run(plan, progress=False, throttle=pace)
    except PaceStop as e:
        print(f"  budget pace paused the move: {e}", flush=True)
        return sum(len(x["slots"]) for x in journal.entries() if x["event"] == "slots_assigned")
    return sum(r.slots for r in results)


def move_reshard(seed: str, creds, new_id: str, slots: int, pause_s: float) -> int:
    """The article's method 2: reshard 100 slots at a time from each old master in turn, pausing between batches."""
    topo = observe(seed, creds)
    sources = [m.id for m in topo.masters() if m.id != new_id]
    moved, i = 0, 0
    while moved < slots:
        n = min(RESHARD_BATCH, slots - moved)
        _redis_cli(creds, "reshard", seed, "--cluster-from", sources[i % len(sources)], "--cluster-to", new_id,
                   "--cluster-slots", str(n), "--cluster-yes")
        moved += n
        i += 1
        if moved < slots:
            time.sleep(pause_s)
    return moved


def one_round(config: str, port: int, keys: int, workdir: Path, slots: int, budget_pct: float,
              probe_rate: float, baseline_s: float, pause_s: float, hosts: int = 1, rtt_ms: float = 0.0) -> dict:
    """Start the sandbox, join the new master and its replica, time one configuration's move, check the end state
    (every key still there, no open slot), stop the sandbox."""
    sb = Sandbox(workdir / f"{config.replace(' ', '-')}-{port}")
    layout = SandboxLayout(port=port, hosts=hosts, rtt_ms=rtt_ms)
    sb.up(layout, keys=keys, progress=False)
    sampler = None
    try:
        creds = sb.credentials()
        seed, new = sb.address(port), sb.address(layout.new_master_ports[0])
        run_dir = sb.root / "run"
        run_dir.mkdir()
        journal = Journal(run_dir / "journal.jsonl")
        nodes.add_masters(seed, creds, [new], journal, apply=True)
        nodes.add_replicas(seed, creds, [(sb.address(layout.new_replica_ports[0]), new)], journal, apply=True)
        before = key_count(observe(seed, creds), creds)
        sampler = Sampler(seed, creds, run_dir)
        sampler.start()
        probe = TrafficProbe([seed], creds, run_dir, rate=probe_rate, stock_processes=1)
        probe.start()
        probe_started = time.time()
        time.sleep(baseline_s + 1)
        rest = probe.records(since=probe_started + 1)
        baseline = {"p99_ms": latency_stats(rest)["p99_ms"], "since": probe_started + 1, "ts": time.time()}
        window_start = time.time()
        started = time.perf_counter()
        new_id = observe(seed, creds).by_address(new).id
        if config == "redis-cli rebalance":
            _redis_cli(creds, "rebalance", seed, "--cluster-use-empty-masters")
            moved_slots = len(observe(seed, creds).slots_by_master()[new_id])
        elif config == "redis-cli reshard x100":
            moved_slots = move_reshard(seed, creds, new_id, slots, pause_s)
        else:
            settings = budget_settings() if config == "budget" else fixed_settings(float(config.split("-")[1]))
            moved_slots = move_ours(seed, creds, new, settings, journal, run_dir, slots, budget_pct, baseline)
        seconds = time.perf_counter() - started
        window_end = time.time()
        time.sleep(baseline_s + 1)
        probe.stop()
        summary = probe.verify()
        records = probe.records()
        ts = records["ts"]
        at_rest = ((ts >= probe_started + 1) & (ts < window_start)) | (ts >= window_end + 1)
        moving = (ts >= window_start) & (ts < window_end)
        ratio, low, high = p99_ratio_interval(records[at_rest]["latency_ms"].to_numpy(float),
                                              records[moving]["latency_ms"].to_numpy(float),
                                              baseline_ts=records[at_rest]["ts"].to_numpy(float),
                                              during_ts=records[moving]["ts"].to_numpy(float))
        probe.cleanup()
        topo = observe(seed, creds)
        problems = [c.detail for c in health(topo) if c.status == "fail" and c.name != "slots balanced"]
        moved_keys = node_client(new, creds).dbsize()
        if topo.open_slots() or key_count(topo, creds) != before:
            raise SystemExit(f"{config}: the end state is wrong: {problems} open {topo.open_slots()}")
        return {"config": config, "slots": moved_slots, "keys": moved_keys, "seconds": seconds,
                "keys_per_s": moved_keys / seconds, "ratio": ratio, "low": low, "high": high,
                "verdict": latency_verdict((ratio, low, high), budget_pct), "failed": summary.errors,
                "stock_failed": summary.stock_errors, "patched_failed": summary.errors - summary.stock_errors,
                "lost": len(summary.lost_writes) + len(summary.wrong_writes),
                "base_p99_ms": baseline["p99_ms"]}
    finally:
        if sampler is not None:
            sampler.stop()
        sb.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000, help="sandbox keys (default 200000)")
    parser.add_argument("--slots", type=int, default=512, help="slots each of our configurations and the reshard "
                                                               "move (default 512; rebalance moves all)")
    parser.add_argument("--rates", default="2.5,5,10,20", help="fixed slots/s to sweep (default 2.5,5,10,20)")
    parser.add_argument("--budget-pct", type=float, default=10.0, help="latency budget, %% over the baseline p99 "
                                                                       "(default the article's 10)")
    parser.add_argument("--only", default="", help="comma-separated configurations to run (default all)")
    parser.add_argument("--port", type=int, default=7900, help="first sandbox port (default 7900)")
    parser.add_argument("--probe-rate", type=float, default=100.0, help="probe requests per second (default 100)")
    parser.add_argument("--baseline-s", type=float, default=20.0,
                        help="seconds of probe at rest before and again after the move (default 20)")
    parser.add_argument("--pause-s", type=float, default=5.0, help="pause between reshard batches (default 5)")
    parser.add_argument("--workdir", default="", help="keep each configuration's sandbox folder (journal, probe "
                                                      "records, metrics) here (default: a temporary folder)")
    parser.add_argument("--hosts", type=int, default=1, help="emulated hosts (default 1: loopback)")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round trip between hosts (default 0)")
    args = parser.parse_args()
    configs = ["budget", *[f"fixed-{float(r):g}" for r in args.rates.split(",") if r],
               "redis-cli rebalance", "redis-cli reshard x100"]
    if args.only:
        configs = [c for c in configs if c in args.only.split(",")]
    results: list[dict] = []
    with contextlib.nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for config in configs:
            try:
                res = one_round(config, args.port, args.keys, Path(tmp), args.slots, args.budget_pct, args.probe_rate,
                                args.baseline_s, args.pause_s, hosts=args.hosts, rtt_ms=args.rtt_ms)
            except SandboxError as e:
                raise SystemExit(f"cannot start the sandbox: {e}") from None
            results.append(res)
            print(f"{config:22}: {res['slots']} slots, {res['keys']} keys in {res['seconds']:.1f} s = "
                  f"{res['keys_per_s']:,.0f} keys/s; p99 x{res['ratio']:.2f} [{res['low']:.2f}, {res['high']:.2f}] "
                  f"of baseline ({res['base_p99_ms']:.2f} ms) -> {res['verdict']} at +{args.budget_pct:g} %; failed "
                  f"{res['stock_failed']} stock / {res['patched_failed']} patched, lost {res['lost']}", flush=True)
    print(f"\n{args.keys} keys, 3+3 -> 4+4, {args.slots} slots per configuration (rebalance: all), probe "
          f"{args.probe_rate:g} req/s, budget +{args.budget_pct:g} %; "
          + (f"{args.hosts} hosts, {args.rtt_ms:g} ms round trip" if args.hosts > 1 else "loopback"))
    print(f"{'configuration':22} {'slots':>6} {'keys/s':>9} {'p99 ratio [95 % interval]':>27} {'verdict':>12} "
          f"{'stock':>6} {'patched':>8} {'lost':>5}")
    for r in results:
        interval = f"x{r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"
        print(f"{r['config']:22} {r['slots']:>6} {r['keys_per_s']:>9,.0f} {interval:>27} {r['verdict']:>12} "
              f"{r['stock_failed']:>6} {r['patched_failed']:>8} {r['lost']:>5}")
    fixed_pass = [r for r in results if r["config"].startswith("fixed-") and r["verdict"] == "pass"
                  and r["failed"] == 0 and r["lost"] == 0]
    ours = next((r for r in results if r["config"] == "budget"), None)
    if ours is not None:
        best = max(fixed_pass, key=lambda r: r["keys_per_s"], default=None)
        share = f"{ours['keys_per_s'] / best['keys_per_s']:.0%} of {best['config']}" if best else \
            "no fixed rate passed, nothing to compare with"
        clean = ours["failed"] == 0 and ours["lost"] == 0
        print(f"budget pace: verdict {ours['verdict']}, {'0 failed and 0 lost' if clean else 'FAILED requests or LOST'}"
              f"; keys/s {share} (target: pass, clean, at least 80 % of the best fixed rate that passes)")
    if not math.isfinite(sum(r["keys_per_s"] for r in results)):
        raise SystemExit("a configuration measured no keys/s")


if __name__ == "__main__":
    main()
