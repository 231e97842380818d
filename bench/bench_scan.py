"""The big-key scan against `redis-cli --bigkeys` and `--memkeys` on the same data, in the same run.

    runbook sandbox up --keys 200000 --dir /tmp/scale-sb --port 21000
    .venv/bin/python bench/bench_scan.py --dir /tmp/scale-sb --port 21000

The runbook's scan runs unpaced (`--max-ops-per-s 0`, the default here) and then, with `--paced`, at the params'
default pace; redis-cli runs once per master, one after another (the sum of their times is what it takes a person to
scan the cluster with it). The password reaches redis-cli through REDISCLI_AUTH, never its command line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

from runbook_lib.cluster.topology import observe
from runbook_lib.config import BigKeys
from runbook_lib.sandbox import Sandbox
from runbook_lib.sections import bigkeys


def redis_cli_seconds(addresses: list[str], password: str, mode: str) -> float:
    """Wall time of `redis-cli --<mode>` against each address, summed."""
    cli = shutil.which("redis-cli") or "redis-cli"
    env = {**os.environ, "REDISCLI_AUTH": password}
    total = 0.0
    for address in addresses:
        host, port = address.rsplit(":", 1)
        started = time.monotonic()
        subprocess.run([cli, "-h", host, "-p", port, f"--{mode}"], env=env, check=True, stdout=subprocess.DEVNULL)
        total += time.monotonic() - started
    return total


def runbook_scan(topo, creds, rate: float | None) -> tuple[float, object]:
    """Wall time of the runbook's scan at `rate` commands per second (None: unpaced), and its result."""
    started = time.monotonic()
    result = bigkeys.scan(topo, creds, BigKeys().threshold_bytes, count=BigKeys().scan_count, top_n=BigKeys().top_n,
                          max_ops_per_s=rate, progress=False)
    return time.monotonic() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/scale-sb", help="the sandbox folder")
    parser.add_argument("--port", type=int, default=21000, help="the sandbox's first port")
    parser.add_argument("--max-ops-per-s", type=float, default=0.0, help="pace of the runbook's scan (0: unpaced)")
    parser.add_argument("--paced", action="store_true", help="also scan at the params' default pace")
    args = parser.parse_args()
    sandbox = Sandbox(args.dir)
    creds = sandbox.credentials()
    topo = observe(f"127.0.0.1:{args.port}", creds)
    masters = [m.address for m in topo.masters()]
    seconds, result = runbook_scan(topo, creds, args.max_ops_per_s or None)
    where = ", ".join(f"{s.shard_master}->{s.role} {s.node}" for s in getattr(result, "shards", [])) or "masters"
    print(f"runbook scan: {result.keys_scanned} keys in {seconds:.2f} s "
          f"({result.keys_scanned / seconds:,.0f} keys/s, {getattr(result, 'commands', 0) or '?'} commands), "
          f"pace {args.max_ops_per_s or 'none'}; read on {where}")
    if args.paced:
        paced, result = runbook_scan(topo, creds, BigKeys().max_ops_per_s)
        print(f"runbook scan at {BigKeys().max_ops_per_s:g} commands/s: {paced:.2f} s")
    for mode in ("bigkeys", "memkeys"):
        cli = redis_cli_seconds(masters, sandbox.credentials().password, mode)
        print(f"redis-cli --{mode} on each of {len(masters)} masters, one after another: {cli:.2f} s; "
              f"runbook scan / redis-cli --{mode} = {seconds / cli:.2f}")


if __name__ == "__main__":
    main()
