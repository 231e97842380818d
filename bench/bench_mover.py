"""Benchmark: our mover against `redis-cli --cluster rebalance --cluster-use-empty-masters` on the same sandbox.

Each round starts the same 3+3 sandbox with the same deterministic keys, joins the new master and attaches its
replica the same way (the replica before any slot moves, as the runbook's 25_add_replicas does), runs the traffic
probe, and times only the slot moves of one tool; rounds alternate tools so drift on the machine hits both. The
baseline is the probe's latency at rest, pooled from a window before the move and one after it (the first second of
the probe, its connection set-up, left out), so that drift during a round does not favour either tool.
Prints, per tool: keys/s, probe p50 and p99 during the migration divided by the baseline's, the p99 ratio's 95 %
bootstrap interval with the +10 % verdict (p pass, f fail, i inconclusive), failed requests (all clients, and the
stock redis-py workers' alone: what applications see) and lost writes, and the ratios between the tools.
Run: .venv/bin/python bench/bench_mover.py [--keys 200000] [--rounds 2] [--preset fast|gentle] [--baseline-s 10]
     [--max-slots-per-s N] [--hosts 4 --rtt-ms 0.5]
With --hosts N the sandbox spreads its nodes over N network namespaces (root, iproute2), --rtt-ms apart (tc netem).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import migrate
from runbook_lib.cluster.topology import observe
from runbook_lib.config import BigKeys, Migration
from runbook_lib.exceptions import SandboxError
from runbook_lib.sandbox import Sandbox, SandboxLayout, redis_binary
from runbook_lib.sections import nodes
from runbook_lib.sections.validate import balance, health, key_count
from runbook_lib.watch.traffic import TrafficProbe, latency_stats
from runbook_lib.watch.verdict import latency_verdict, p99_ratio_interval


def one_round(tool: str, port: int, keys: int, settings: Migration, workdir: Path, probe_rate: float = 200.0,
              baseline_s: float = 10.0, hosts: int = 1, rtt_ms: float = 0.0) -> dict:
    """Start the sandbox, join the new master and its replica, time one tool's rebalance, check the end state, stop
    the sandbox."""
    sb = Sandbox(workdir / f"{tool}-{port}")
    layout = SandboxLayout(port=port, hosts=hosts, rtt_ms=rtt_ms)
    sb.up(layout, keys=keys, progress=False)
    try:
        creds = sb.credentials()
        seed, new = sb.address(port), sb.address(layout.new_master_ports[0])
        journal = Journal(sb.root / "journal.jsonl")
        nodes.add_masters(seed, creds, [new], journal, apply=True)
        nodes.add_replicas(seed, creds, [(sb.address(layout.new_replica_ports[0]), new)], journal, apply=True)
        before = key_count(observe(seed, creds), creds)
        probe = TrafficProbe([seed], creds, sb.root / "run", rate=probe_rate)
        probe.start()
        probe_started = time.time()
        time.sleep(baseline_s + 1)
        window_start = time.time()
        started = time.perf_counter()
        if tool == "redis-cli":
            env = {**os.environ, "REDISCLI_AUTH": creds.password}
            proc = subprocess.run([redis_binary("redis-cli"), "--cluster", "rebalance", seed,
                                   "--cluster-use-empty-masters"], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"redis-cli rebalance failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
        else:
            migrate(observe(seed, creds), creds, [new], settings, journal, bigkeys=BigKeys(), progress=False)
        seconds = time.perf_counter() - started
        window_end = time.time()
        time.sleep(baseline_s + 1)
        probe.stop()
        summary = probe.verify()
        records = probe.records()
        ts = records["ts"]
        at_rest = ((ts >= probe_started + 1) & (ts < window_start)) | (ts >= window_end + 1)
        base = latency_stats(records[at_rest])
        moving = (records["ts"] >= window_start) & (records["ts"] < window_end)
        during = latency_stats(records[moving])
        ratio, low, high = p99_ratio_interval(records[at_rest]["latency_ms"].to_numpy(float),
                                              records[moving]["latency_ms"].to_numpy(float))
        probe.cleanup()
        topo = observe(seed, creds)
        problems = [c.detail for c in health(topo) + [balance(topo)] if c.status == "fail"]
        moved = topo.by_address(new)
        moved_keys = node_client(new, creds).dbsize()
        if problems or key_count(topo, creds) != before or moved is None:
            raise SystemExit(f"{tool}: the end state is wrong: {problems}")
        return {"tool": tool, "keys": moved_keys, "seconds": seconds, "keys_per_s": moved_keys / seconds,
                "p50_ratio": during["p50_ms"] / base["p50_ms"], "p99_ratio": during["p99_ms"] / base["p99_ms"],
                "base_p99_ms": base["p99_ms"], "p99_ms": during["p99_ms"], "failed": summary.errors,
                "stock_failed": summary.stock_errors, "p99_low": low, "p99_high": high,
                "verdict": latency_verdict((ratio, low, high), 10.0),
                "lost": len(summary.lost_writes) + len(summary.wrong_writes)}
    finally:
        sb.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000, help="sandbox keys (default 200000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per tool, alternating (default 2)")
    parser.add_argument("--port", type=int, default=7900, help="first sandbox port (default 7900)")
    parser.add_argument("--preset", default="fast", help="our mover's params preset: fast (default) or gentle")
    parser.add_argument("--probe-rate", type=float, default=200.0, help="probe requests per second (default 200)")
    parser.add_argument("--baseline-s", type=float, default=10.0,
                        help="seconds of probe at rest before and again after the move (default 10)")
    parser.add_argument("--max-slots-per-s", type=float, default=None,
                        help="override the preset's migration.max_slots_per_s (0: no limit)")
    parser.add_argument("--hosts", type=int, default=1, help="emulated hosts (default 1: loopback)")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round trip between hosts (default 0)")
    args = parser.parse_args()
    overrides = {} if args.max_slots_per_s is None else {"max_slots_per_s": args.max_slots_per_s}
    settings = Migration.model_validate({"preset": args.preset, **overrides})
    results: dict[str, list[dict]] = {"redis-cli": [], "runbook": []}
    with tempfile.TemporaryDirectory(prefix="bench-mover-") as tmp:
        for r in range(args.rounds):
            order = ("redis-cli", "runbook") if r % 2 == 0 else ("runbook", "redis-cli")
            for tool in order:
                try:
                    res = one_round(tool, args.port, args.keys, settings, Path(tmp), probe_rate=args.probe_rate,
                                    baseline_s=args.baseline_s, hosts=args.hosts, rtt_ms=args.rtt_ms)
                except SandboxError as e:
                    raise SystemExit(f"cannot start the sandbox: {e}") from None
                results[tool].append(res)
                print(f"round {r + 1} {tool:9}: {res['keys']} keys in {res['seconds']:.2f} s = "
                      f"{res['keys_per_s']:,.0f} keys/s; p50 x{res['p50_ratio']:.2f}, p99 x{res['p99_ratio']:.2f} "
                      f"[{res['p99_low']:.2f}, {res['p99_high']:.2f}] of baseline ({res['p99_ms']:.2f} vs "
                      f"{res['base_p99_ms']:.2f} ms; +10 % verdict: {res['verdict']}); failed requests "
                      f"{res['failed']} (stock clients {res['stock_failed']}), lost writes {res['lost']}", flush=True)
    med = {t: {k: statistics.median(x[k] for x in rs) for k in ("keys_per_s", "p50_ratio", "p99_ratio")}
           for t, rs in results.items()}
    failed = {t: sum(x["failed"] for x in rs) for t, rs in results.items()}
    stock = {t: sum(x["stock_failed"] for x in rs) for t, rs in results.items()}
    lost = {t: sum(x["lost"] for x in rs) for t, rs in results.items()}
    print(f"\n{args.keys} keys, 3+3 -> 4+4, runbook preset {args.preset} ({settings.slots_per_batch} slots per batch, "
          f"{settings.slots_in_flight} in flight, {settings.migrates_per_round_trip} MIGRATEs per round trip, "
          f"{settings.keys_per_migrate} keys per MIGRATE, {settings.pause_between_batches_s} s pause, "
          f"{settings.max_slots_per_s or 'no'} slots/s limit); medians of "
          f"{args.rounds} rounds; "
          + (f"{args.hosts} hosts, {args.rtt_ms:g} ms round trip" if args.hosts > 1 else "loopback"))
    print(f"{'tool':10} {'keys/s':>10} {'p50/base':>9} {'p99/base':>9} {'p99 95% interval, each round':>30} "
          f"{'failed':>7} {'stock':>6} {'lost':>5}")
    for t in ("redis-cli", "runbook"):
        spans = " ".join(f"[{x['p99_low']:.2f},{x['p99_high']:.2f}]{x['verdict'][0]}" for x in results[t])
        print(f"{t:10} {med[t]['keys_per_s']:>10,.0f} {med[t]['p50_ratio']:>9.2f} {med[t]['p99_ratio']:>9.2f} "
              f"{spans:>30} {failed[t]:>7} {stock[t]:>6} {lost[t]:>5}")
    print(f"ratios runbook / redis-cli: keys/s {med['runbook']['keys_per_s'] / med['redis-cli']['keys_per_s']:.2f}x, "
          f"p99 ratio {med['runbook']['p99_ratio'] / med['redis-cli']['p99_ratio']:.2f}")


if __name__ == "__main__":
    main()
