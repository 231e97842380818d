"""Benchmark: our mover against `redis-cli --cluster rebalance --cluster-use-empty-masters` on the same sandbox.

Each round starts the same 3+3 sandbox with the same deterministic keys, joins the new master the same way, and
times only the slot moves of one tool; rounds alternate tools so drift on the machine hits both. Prints keys/s of
each and the ratio. Run: .venv/bin/python bench/bench_mover.py [--keys 200000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from runbook_lib import nodes
from runbook_lib.config import BigKeys, Migration
from runbook_lib.connection import node_client
from runbook_lib.journal import Journal
from runbook_lib.migrate import migrate
from runbook_lib.sandbox import Sandbox, SandboxLayout, redis_binary
from runbook_lib.topology import observe
from runbook_lib.validate import balance, health, key_count


def one_round(tool: str, port: int, keys: int, settings: Migration, workdir: Path) -> dict:
    """Start the sandbox, join the new master, time one tool's rebalance, check the end state, stop the sandbox."""
    sb = Sandbox(workdir / f"{tool}-{port}")
    layout = SandboxLayout(port=port)
    sb.up(layout, keys=keys, progress=False)
    try:
        creds = sb.credentials()
        seed, new = f"127.0.0.1:{port}", f"127.0.0.1:{layout.new_master_ports[0]}"
        journal = Journal(sb.root / "journal.jsonl")
        nodes.add_masters(seed, creds, [new], journal, apply=True)
        before = key_count(observe(seed, creds), creds)
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
        time.sleep(1)
        topo = observe(seed, creds)
        problems = [c.detail for c in health(topo, pending_replicas={new}) + [balance(topo)] if c.status == "fail"]
        moved = topo.by_address(new)
        moved_keys = node_client(new, creds).dbsize()
        if problems or key_count(topo, creds) != before or moved is None:
            raise SystemExit(f"{tool}: the end state is wrong: {problems}")
        return {"tool": tool, "keys": moved_keys, "seconds": seconds, "keys_per_s": moved_keys / seconds}
    finally:
        sb.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000, help="sandbox keys (default 200000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per tool, alternating (default 2)")
    parser.add_argument("--port", type=int, default=7900, help="first sandbox port (default 7900)")
    parser.add_argument("--slots-per-batch", type=int, default=Migration().slots_per_batch)
    parser.add_argument("--keys-per-migrate", type=int, default=Migration().keys_per_migrate)
    args = parser.parse_args()
    settings = Migration(slots_per_batch=args.slots_per_batch, keys_per_migrate=args.keys_per_migrate)
    results: dict[str, list[dict]] = {"redis-cli": [], "runbook": []}
    with tempfile.TemporaryDirectory(prefix="bench-mover-") as tmp:
        for r in range(args.rounds):
            order = ("redis-cli", "runbook") if r % 2 == 0 else ("runbook", "redis-cli")
            for tool in order:
                res = one_round(tool, args.port, args.keys, settings, Path(tmp))
                results[tool].append(res)
                print(f"round {r + 1} {tool:9}: {res['keys']} keys in {res['seconds']:.2f} s = "
                      f"{res['keys_per_s']:,.0f} keys/s", flush=True)
    med = {t: statistics.median(x["keys_per_s"] for x in rs) for t, rs in results.items()}
    print(f"\nmedian keys/s: redis-cli {med['redis-cli']:,.0f}, runbook {med['runbook']:,.0f}; "
          f"ratio runbook / redis-cli = {med['runbook'] / med['redis-cli']:.2f}x "
          f"({args.keys} keys, 3+3 -> 4+4, slots_per_batch {settings.slots_per_batch}, "
          f"keys_per_migrate {settings.keys_per_migrate})")


if __name__ == "__main__":
    main()
