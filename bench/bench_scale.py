"""The scale run: one data set expanded 3+3 -> 4+4 by the whole runbook with the default params, beside
`redis-cli --cluster rebalance` and the article's method 2 (`redis-cli --cluster reshard` 100 slots at a time) on the
same data.

    .venv/bin/python bench/bench_scale.py --keys 2000000 [--values mixed] [--port 25000] [--out scale.json]
    .venv/bin/python bench/bench_scale.py --keys 10000000 --values small

1. `runbook sandbox up --keys K --values V` (timed; the bytes its masters hold are read from INFO memory).
2. `runbook run --params <sandbox>/params.yaml`: the sandbox's params are the defaults (the `budget` preset, the
   article's +10 %, the probe on). Per section its wall time (the run folder's `results/`); while slots moved, keys/s
   and MB/s (the journal: first slot opened to last handed over, the bytes the MIGRATEs carried); the latency verdict
   (`acceptance.json`); failed requests and lost writes (the probe's summary); 30_plan's estimate against the actual;
   and the peak resident memory of the runbook's own processes (`runbook run`, its kernels, the probe and the
   sampler; sampled every second from /proc): the largest one, and all of them together.
3. `bench_mover.py --only "redis-cli rebalance,redis-cli reshard x100" --move-s 0` with the same keys and values: a
   fresh sandbox each, the same probe, the whole plan moved.

Prints one table and the ratios runbook / redis-cli on keys/s. Timing on this machine is limited by its two cores,
which the servers, the runbook and its probe share.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.topology import observe
from runbook_lib.sandbox import VALUES, Sandbox, SandboxLayout
from runbook_lib.sections.plan import estimate_against_actual
from runbook_lib.watch.timeline import achieved_pace, migrations

BENCH = Path(__file__).resolve().parent
OURS = ("runbook", "ipykernel")
"""What names a process of the runbook's own in its command line: `runbook run`, `runbook_lib.watch.*` workers, and
the notebooks' kernels."""


class PeakMemory:
    """Samples every second the resident set of the runbook's own processes (by their command lines, this script
    left out) and keeps the largest single one and the largest total."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.largest = 0
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            sizes = list(resident_sets().values())
            self.largest = max(self.largest, *sizes, 0)
            self.total = max(self.total, sum(sizes))


def resident_sets() -> dict[int, int]:
    """pid -> resident bytes of every process whose command line names the runbook, apart from this one."""
    found = {}
    me = Path("/proc/self").resolve().name
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == me:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "bench_scale" in cmdline or not any(word in cmdline for word in OURS):
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found[int(proc.name)] = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return found


def bring_up(root: Path, keys: int, values: str, port: int) -> tuple[Sandbox, float, dict]:
    """A fresh sandbox with the data; its start-up seconds and what its masters hold (keys, bytes)."""
    sandbox = Sandbox(root)
    started = time.monotonic()
    sandbox.up(SandboxLayout(port=port), keys=keys, progress=False, values=values)
    seconds = time.monotonic() - started
    creds = sandbox.credentials()
    held = {"keys": 0, "used_memory": 0, "dataset": 0}
    for master in observe(sandbox.address(port), creds).masters():
        client = node_client(master.address, creds)
        memory = client.info("memory")
        held["keys"] += client.dbsize()
        held["used_memory"] += memory["used_memory"]
        held["dataset"] += memory["used_memory_dataset"]
    return sandbox, seconds, held


def run_runbook(sandbox: Sandbox, out: Path) -> dict:
    """`runbook run` on the sandbox's params under the memory sampler; what its run folder says."""
    runbook = Path(sys.executable).parent / "runbook"
    started = time.monotonic()
    with PeakMemory() as peak:
        proc = subprocess.run([str(runbook), "run", "--params", str(sandbox.root / "params.yaml"), "--out", str(out)],
                              capture_output=True, text=True)
    found = {"exit": proc.returncode, "wall_s": time.monotonic() - started, "peak_rss_largest": peak.largest,
             "peak_rss_total": peak.total, "log_tail": proc.stdout.splitlines()[-4:]}
    return found | run_folder(out)


def run_folder(run_dir: Path) -> dict:
    """Per-section seconds, the migration's pace, the verdict, failures and the estimate, from a run folder."""
    sections = {}
    for path in sorted((run_dir / "results").glob("*.json")):
        result = json.loads(path.read_text())
        sections[result["section"]] = {"status": result["status"], "seconds": result.get("seconds")}
    pace = achieved_pace(migrations(Journal(run_dir / "journal.jsonl").entries())["expansion"]) or {}
    acceptance = json.loads((run_dir / "acceptance.json").read_text()) if (run_dir / "acceptance.json").exists() \
        else {"checks": []}
    latency = next((c for c in acceptance["checks"] if c["name"] == "latency variation"), {})
    probe = json.loads((run_dir / "probe-summary.json").read_text()) if (run_dir / "probe-summary.json").exists() \
        else {}
    return {"sections": sections, "migration_s": pace.get("seconds"), "slots": pace.get("slots"),
            "keys_moved": pace.get("keys"), "bytes_moved": pace.get("bytes"),
            "keys_per_s": pace.get("keys_per_s"), "mb_per_s": (pace.get("bytes_per_s") or 0) / 1e6 or None,
            "verdict": latency.get("status"), "verdict_detail": latency.get("detail", ""),
            "requests": probe.get("ops"), "failed": probe.get("errors"),
            "lost": len(probe.get("lost_writes", [])) + len(probe.get("wrong_writes", [])),
            "estimate": estimate_against_actual(run_dir)}


def run_redis_cli(keys: int, values: str, port: int, out: Path) -> list[dict]:
    """The two redis-cli methods through bench_mover.py, each on a fresh sandbox with the same data."""
    subprocess.run([sys.executable, str(BENCH / "bench_mover.py"), "--keys", str(keys), "--values", values,
                    "--only", "redis-cli rebalance,redis-cli reshard x100", "--rounds", "1", "--move-s", "0",
                    "--port", str(port), "--out", str(out)], check=True)
    return json.loads(out.read_text())["results"]


def print_table(args, up_s: float, held: dict, ours: dict, theirs: list[dict]) -> None:
    """The scale run's table and its ratios to redis-cli."""
    print(f"\n{args.keys:,} keys ({args.values} values): sandbox up in {up_s:.0f} s; the masters hold "
          f"{held['keys']:,} keys, {held['used_memory'] / 1e9:.2f} GB used ({held['dataset'] / 1e9:.2f} GB of data), "
          "as much again on the replicas")
    print("runbook run (default params): exit {exit}, {wall_s:.0f} s wall".format(**ours))
    for name, s in ours["sections"].items():
        print(f"  {name:16} {s['status']:5} {s['seconds'] or 0:8.1f} s")
    if ours["migration_s"]:
        print(f"  slots moved: {ours['slots']} slots, {ours['keys_moved']:,} keys, "
              f"{(ours['bytes_moved'] or 0) / 1e6:,.0f} MB in {ours['migration_s']:.0f} s: "
              f"{ours['keys_per_s']:,.0f} keys/s, {ours['mb_per_s'] or 0:.2f} MB/s")
    print(f"  verdict: {ours['verdict']} ({ours['verdict_detail'][:160]}...)")
    print(f"  requests {ours['requests']}, failed {ours['failed']}, lost {ours['lost']}")
    if ours["estimate"]:
        e = ours["estimate"]
        print(f"  30_plan estimated {e['estimated_s']:.0f} s, actual {e['actual_s']:.0f} s "
              f"(x{e['actual_over_estimate']:.2f}): {e['basis'][:120]}...")
    print(f"  peak resident memory of the runbook's processes: largest {ours['peak_rss_largest'] / 2**20:.0f} MiB, "
          f"all together {ours['peak_rss_total'] / 2**20:.0f} MiB")
    for r in theirs:
        ratio = r["vs_baseline"][0]
        print(f"{r['config']:22} {r['slots']} slots, {r['keys']:,} keys in {r['seconds']:.0f} s: "
              f"{r['keys_per_s']:,.0f} keys/s; p99 x{ratio:.2f} the baseline ({r['baseline_verdict']}), "
              f"vs its pauses {r['verdict']}; failed {r['stock_failed'] + r['patched_failed']}, lost {r['lost']}; "
              f"runbook / it on keys/s = {(ours['keys_per_s'] or 0) / r['keys_per_s']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=2_000_000, help="keys to load (default 2000000)")
    parser.add_argument("--values", choices=VALUES, default="mixed", help="the data's profile (default mixed)")
    parser.add_argument("--port", type=int, default=25000, help="the runbook's sandbox's first port (default 25000; "
                                                                "redis-cli's use this + 100)")
    parser.add_argument("--workdir", default="", help="keep the sandbox and run folders here (default: temporary)")
    parser.add_argument("--skip-redis-cli", action="store_true", help="only the runbook's run")
    parser.add_argument("--out", default="", help="write the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        sandbox, up_s, held = bring_up(work / "sandbox", args.keys, args.values, args.port)
        try:
            ours = run_runbook(sandbox, work / "run")
        finally:
            sandbox.down()
        theirs = [] if args.skip_redis_cli else run_redis_cli(args.keys, args.values, args.port + 100,
                                                              work / "redis-cli.json")
    print_table(args, up_s, held, ours, theirs)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "sandbox_up_s": up_s, "held": held,
                                              "runbook": ours, "redis_cli": theirs}, indent=2, default=str))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
