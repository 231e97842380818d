"""Benchmark: our budget pace against hand-tuned fixed rates and redis-cli on the same sandbox, data and probe, judged
as the report judges a run: the clients' p99 while slots moved against a control measured at the same time.

Each configuration gets a fresh 3+3 sandbox with the same deterministic keys, joins the new master and attaches its
replica the same way (the replica before any slot moves, as the runbook's 25_add_replicas does), runs the traffic
probe (patched and stock redis-py workers) and the node sampler, and times only the slot moves:

- `budget`: our default (`Migration()`: the budget governor, quiet spells on, MIGRATE rounds spaced to a 1 % duty
  cycle), governed and judged at `--budget-pct`; `budget-P` the same at +P % (`--only budget-10,budget-50,budget-200`
  gives the trade-off table of a budget against keys/s and MB/s);
- `fixed-R`: the sweep an SRE would do by hand, our mover at a fixed R slots/s (preset gentle's one slot at a time),
  quiet spells on as well, so that it is judged the same way;
- `redis-cli rebalance`: `redis-cli --cluster rebalance --cluster-use-empty-masters` (it moves everything);
- `redis-cli reshard x100`: the article's method 2, `redis-cli --cluster reshard` of 100 slots per batch from each
  old master in turn, with `--pause-s` between batches.

The verdict (docs/design.md, Proof of zero downtime) compares the probe's p99 while slots moved with its p99 in the
control: for our mover the quiet spells it journals (`quiet_start`/`quiet_end`, nothing moves in them), for the
reshard the pauses between its batches (from `MOVE_TAIL_S` after a batch to the next), for the rebalance nothing (it
never pauses: only the baseline comparison judges it). The statistic is the report's, `p99_ratio_interval(control,
moving)` by whole seconds, and `latency_verdict` against `--budget-pct`. Beside it, the comparison with the
baseline: the probe at rest for `--baseline-s` before the move.

Quiet spells come every 20 s of moving, so a move needs a few tens of seconds to have a control at all. Our
configurations and the reshard therefore move the plan's slots in the plan's order (the same slots, in the same
order, for every configuration) for `--move-s` seconds, stopping between slots, or until `--slots` have moved; a
fast rate moves more slots than a slow one in that time, and keys/s compares rates. `--move-s 0` moves exactly
`--slots` slots instead. `--rounds` rounds run every configuration, each round in a rotated order, so that a drift
of the machine's load is spread over the configurations.

Prints, per round and configuration: slots and keys moved, keys/s (over the move's wall time, quiet spells
included), the p99 ratio moving vs control with its 95 % interval and verdict, the same against the baseline,
failed requests (stock and patched redis-py workers), lost writes, and the share of the move's wall time spent
quiet (for our mover: each spell's drain, hand-over tail and the spell itself; for the reshard: its pauses). Ends
with whether the budget pace passed (or stayed inconclusive, never failed) in every round, and its keys/s against the
fastest fixed rate that did too (target: at least 0.8); `--out` writes it all as JSON.
Run: .venv/bin/python bench/bench_mover.py [--keys 200000] [--rounds 3] [--move-s 48] [--rates 2.5,5,10,20,40]
     [--budget-pct 10] [--only budget,fixed-40,redis-cli rebalance] [--port 20000] [--out bench.json]
     [--hosts 4 --rtt-ms 0.5]
With --hosts N the sandbox spreads its nodes over N network namespaces (root, iproute2), --rtt-ms apart (tc netem).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import current_plan
from runbook_lib.cluster.mover import Mover
from runbook_lib.cluster.topology import observe
from runbook_lib.config import BigKeys, Gates, Migration
from runbook_lib.exceptions import PaceStop, SandboxError
from runbook_lib.sandbox import VALUES, Sandbox, SandboxLayout, redis_binary
from runbook_lib.sections import nodes
from runbook_lib.sections.validate import health, key_count
from runbook_lib.watch.migrate_cost import migrate_costs
from runbook_lib.watch.pace import governor
from runbook_lib.watch.probe import TrafficProbe
from runbook_lib.watch.probe_stats import latency_stats
from runbook_lib.watch.sampler import Sampler
from runbook_lib.watch.timeline import MOVE_TAIL_S, inside, moving_windows, quiet_windows
from runbook_lib.watch.verdict import RatioInterval, latency_verdict, p99_ratio_interval

RESHARD_BATCH = 100
REBALANCE = "redis-cli rebalance"
RESHARD = "redis-cli reshard x100"
CONTROLS = {REBALANCE: "none (never pauses): baseline only", RESHARD: "pauses between batches"}
OURS_CONTROL = "quiet spells"
NO_INTERVAL: RatioInterval = (math.nan, math.nan, math.nan)
Span = tuple[float, float]


@dataclass
class Moved:
    """What one configuration's move left to judge: slots moved, wall time, the moving and control spans, and the
    seconds spent quiet (spells with their drain and tail, or pauses between batches)."""

    slots: int
    seconds: float
    moving: list[Span]
    control: list[Span]
    quiet_s: float = 0.0
    note: str = ""
    nbytes: int | None = None
    """Bytes the MIGRATEs carried (MEMORY USAGE, from our journal; None for redis-cli)."""
    duty_pct: float | None = None
    """The busiest source's share of the moving time blocked by MIGRATE rounds (ours only)."""


@dataclass
class Result:
    """One round of one configuration, as printed and written to JSON."""

    round: int
    config: str
    control: str
    slots: int
    keys: int
    seconds: float
    keys_per_s: float
    quiet_share: float
    vs_control: RatioInterval
    verdict: str
    vs_baseline: RatioInterval
    baseline_verdict: str
    base_p99_ms: float
    stock_failed: int
    patched_failed: int
    lost: int
    elapsed_s: float
    notes: list[str] = field(default_factory=list)
    mb_per_s: float | None = None
    duty_pct: float | None = None

    @property
    def clean(self) -> bool:
        return self.stock_failed + self.patched_failed == 0 and self.lost == 0


def budget_settings() -> Migration:
    """The runbook's default: budget governor, quiet spells every 20 s."""
    return Migration()


def fixed_settings(rate: float) -> Migration:
    """Preset gentle (one slot at a time) at a fixed `rate` slots/s, quiet spells as in the default."""
    return Migration(preset="gentle", max_slots_per_s=rate)


class TimeBox:
    """The mover's pace for a bench move: the governor's settings (or fixed ones), and a stop between slots
    (`PaceStop`) once `seconds` have passed (never, when 0)."""

    def __init__(self, settings: Migration, seconds: float, inner=None) -> None:
        self.settings, self.inner = settings, inner
        self.deadline = time.time() + seconds if seconds > 0 else math.inf
        self.expired = False

    def before_batch(self, number: int) -> Migration:
        self._check()
        return self.inner.before_batch(number) if self.inner else self.settings

    def before_group(self) -> Migration:
        self._check()
        return self.inner.before_group() if self.inner else self.settings

    def end(self) -> None:
        if self.inner:
            self.inner.end()

    def _check(self) -> None:
        if time.time() >= self.deadline:
            self.expired = True
            raise PaceStop("the bench's time box is over")


def _redis_cli(creds, *args: str) -> None:
    env = {**os.environ, "REDISCLI_AUTH": creds.password}
    proc = subprocess.run([redis_binary("redis-cli"), "--cluster", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"redis-cli {args[0]} failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")


def quiet_seconds(entries: list[dict]) -> float:
    """Seconds the mover spent on its quiet spells: each spell's drain, hand-over tail and the spell itself."""
    waits = sum(float(e.get("drained_s", 0.0)) + float(e.get("tail_s", 0.0)) for e in entries
                if e.get("event") == "quiet_start")
    return waits + sum(end - start for start, end in quiet_windows(entries))


def move_ours(seed: str, creds, new: str, settings: Migration, journal: Journal, run_dir: Path, slots: int,
              move_s: float, budget_pct: float, baseline: dict) -> Moved:
    """Our mover over the plan's slots in order, under the budget governor or at a fixed rate, for `move_s` seconds
    or `slots` slots; moving spans and quiet spells from its journal."""
    topo = observe(seed, creds)
    plan = current_plan(topo, creds, [new], settings)
    moves = plan.moves[:slots]
    plan.batches = [moves[i: i + settings.slots_per_batch] for i in range(0, len(moves), settings.slots_per_batch)]
    inner = None
    if settings.pace == "budget":
        inner = governor(settings, Gates(latency_budget_pct=budget_pct), run_dir, journal, baseline)
    note = ""
    started = time.time()
    box = TimeBox(settings, move_s, inner)
    try:
        Mover(topo, creds, settings, journal, BigKeys()).run(plan, progress=False, throttle=box)
    except PaceStop as e:
        if not box.expired:
            note = f"the budget pace paused the move: {e}"
            print(f"  {note}", flush=True)
    ended = time.time()
    entries = list(journal.entries())
    moved = sum(len(e["slots"]) for e in entries if e["event"] == "slots_assigned")
    duties = [r["duty_pct"] for r in migrate_costs(entries) if r["duty_pct"] is not None]
    return Moved(moved, ended - started, moving_windows(entries, now=ended + MOVE_TAIL_S), quiet_windows(entries),
                quiet_seconds(entries), note,
                nbytes=sum(int(e.get("bytes", 0)) for e in entries if e["event"] == "keys_migrated"),
                duty_pct=max(duties, default=None))


def move_reshard(seed: str, creds, new_id: str, slots: int, move_s: float, pause_s: float) -> Moved:
    """The article's method 2: reshard 100 slots at a time from each old master in turn, pausing between batches,
    until `slots` have moved or `move_s` has passed; each pause, from `MOVE_TAIL_S` after a batch on, is control."""
    topo = observe(seed, creds)
    sources = [m.id for m in topo.masters() if m.id != new_id]
    moving: list[Span] = []
    moved, i = 0, 0
    started = time.time()
    while moved < slots and (move_s <= 0 or time.time() - started < move_s):
        if moving:
            time.sleep(pause_s)
        n = min(RESHARD_BATCH, slots - moved)
        batch_start = time.time()
        _redis_cli(creds, "reshard", seed, "--cluster-from", sources[i % len(sources)], "--cluster-to", new_id,
                   "--cluster-slots", str(n), "--cluster-yes")
        moving.append((batch_start, time.time() + MOVE_TAIL_S))
        moved += n
        i += 1
    ended = time.time()
    control = [(a[1], b[0]) for a, b in zip(moving, moving[1:]) if b[0] > a[1]]
    return Moved(moved, ended - started, moving, control, sum(b - a for a, b in control))


def move_rebalance(seed: str, creds, new_id: str) -> Moved:
    """`redis-cli --cluster rebalance --cluster-use-empty-masters`: all of it at once, with no pause to compare with."""
    started = time.time()
    _redis_cli(creds, "rebalance", seed, "--cluster-use-empty-masters")
    ended = time.time()
    moved = len(observe(seed, creds).slots_by_master()[new_id])
    return Moved(moved, ended - started, [(started, ended + MOVE_TAIL_S)], [])


def sandbox_keys_on(address: str, creds, probe_prefix: str) -> int:
    """Keys of the sandbox's data on one master (the probe's own keys left out)."""
    client = node_client(address, creds)
    return sum(1 for k in client.scan_iter(count=5000) if not k.startswith(probe_prefix.encode()))


def interval_of(records: pd.DataFrame, reference: np.ndarray, moving: np.ndarray) -> RatioInterval:
    """p99(moving) / p99(reference) with its interval by whole seconds, as the report computes it."""
    if not reference.any() or not moving.any():
        return NO_INTERVAL
    lat, ts = records["latency_ms"].to_numpy(float), records["ts"].to_numpy(float)
    return p99_ratio_interval(lat[reference], lat[moving], baseline_ts=ts[reference], during_ts=ts[moving])


def judge(records: pd.DataFrame, move: Moved, rest: Span, budget_pct: float) -> dict:
    """The verdict moving vs control (none without a control) and, beside it, moving vs the baseline at rest."""
    ts = records["ts"].to_numpy(float)
    moving = inside(ts, move.moving)
    vs_control = interval_of(records, inside(ts, move.control), moving) if move.control else NO_INTERVAL
    vs_baseline = interval_of(records, inside(ts, [rest]), moving)
    return {"vs_control": vs_control, "verdict": latency_verdict(vs_control, budget_pct) if move.control else "n/a",
            "vs_baseline": vs_baseline, "baseline_verdict": latency_verdict(vs_baseline, budget_pct)}


def run_move(config: str, seed: str, creds, new: str, journal: Journal, run_dir: Path, args, baseline: dict) -> Moved:
    """Move slots the configuration's way."""
    new_id = observe(seed, creds).by_address(new).id
    if config == REBALANCE:
        return move_rebalance(seed, creds, new_id)
    if config == RESHARD:
        return move_reshard(seed, creds, new_id, args.slots, args.move_s, args.pause_s)
    settings = budget_settings() if config.startswith("budget") else fixed_settings(float(config.split("-")[1]))
    return move_ours(seed, creds, new, settings, journal, run_dir, args.slots, args.move_s, budget_of(config, args),
                     baseline)


def budget_of(config: str, args) -> float:
    """The latency budget a configuration is governed (budget-P) and judged by: P for `budget-P`, else
    `--budget-pct`."""
    return float(config.split("-")[1]) if config.startswith("budget-") else args.budget_pct


def one_round(number: int, config: str, workdir: Path, args) -> Result:
    """Start the sandbox, join the new master and its replica, measure the baseline at rest, time one
    configuration's move, judge it, check the end state (every key still there, no open slot), stop the sandbox."""
    began = time.time()
    sb = Sandbox(workdir / f"round{number}-{config.replace(' ', '-')}-{args.port}")
    layout = SandboxLayout(port=args.port, hosts=args.hosts, rtt_ms=args.rtt_ms)
    sb.up(layout, keys=args.keys, progress=False, values=args.values)
    sampler = None
    try:
        creds = sb.credentials()
        seed, new = sb.address(args.port), sb.address(layout.new_master_ports[0])
        run_dir = sb.root / "run"
        run_dir.mkdir()
        journal = Journal(run_dir / "journal.jsonl")
        nodes.add_masters(seed, creds, [new], journal, apply=True)
        nodes.add_replicas(seed, creds, [(sb.address(layout.new_replica_ports[0]), new)], journal, apply=True)
        before = key_count(observe(seed, creds), creds)
        sampler = Sampler(seed, creds, run_dir)
        sampler.start()
        probe = TrafficProbe([seed], creds, run_dir, rate=args.probe_rate, stock_processes=1)
        probe.start()
        rest_start = time.time() + 1
        time.sleep(args.baseline_s + 1)
        rest = (rest_start, time.time())
        baseline = {"p99_ms": latency_stats(probe.records(since=rest_start))["p99_ms"], "since": rest_start,
                    "ts": rest[1]}
        move = run_move(config, seed, creds, new, journal, run_dir, args, baseline)
        time.sleep(MOVE_TAIL_S)
        probe.stop()
        summary = probe.verify()
        verdicts = judge(probe.records(), move, rest, budget_of(config, args))
        probe.cleanup()
        topo = observe(seed, creds)
        problems = [c.detail for c in health(topo) if c.status == "fail" and c.name != "slots balanced"]
        if topo.open_slots() or key_count(topo, creds) != before:
            raise SystemExit(f"{config}: the end state is wrong: {problems} open {topo.open_slots()}")
        keys = sandbox_keys_on(new, creds, probe.settings.prefix)
        return Result(round=number, config=config, control=CONTROLS.get(config, OURS_CONTROL), slots=move.slots,
                      keys=keys, seconds=move.seconds, keys_per_s=keys / move.seconds,
                      quiet_share=move.quiet_s / move.seconds, **verdicts, base_p99_ms=baseline["p99_ms"],
                      stock_failed=summary.stock_errors, patched_failed=summary.errors - summary.stock_errors,
                      lost=len(summary.lost_writes) + len(summary.wrong_writes), elapsed_s=time.time() - began,
                      notes=[move.note] if move.note else [],
                      mb_per_s=move.nbytes / 1e6 / move.seconds if move.nbytes is not None else None,
                      duty_pct=move.duty_pct)
    finally:
        if sampler is not None:
            sampler.stop()
        sb.down()


def _ratio(interval: RatioInterval) -> str:
    ratio, low, high = interval
    if ratio != ratio:
        return "-"
    return f"x{ratio:.2f} [{low:.2f}, {high:.2f}]" if low == low else f"x{ratio:.2f} [no interval]"


HEADER = (f"{'rd':>2} {'configuration':22} {'slots':>5} {'keys/s':>7} {'MB/s':>6} {'duty':>5} {'quiet':>5} "
          f"{'vs control [95 %]':>22} "
          f"{'verdict':>12} {'vs baseline [95 %]':>22} {'verdict':>12} {'stock':>5} {'patch':>5} {'lost':>4}")


def row(r: Result) -> str:
    """One result as a table row."""
    mb = f"{r.mb_per_s:.2f}" if r.mb_per_s is not None else "-"
    duty = f"{r.duty_pct:.1f}%" if r.duty_pct is not None else "-"
    return (f"{r.round:>2} {r.config:22} {r.slots:>5} {r.keys_per_s:>7,.0f} {mb:>6} {duty:>5} {r.quiet_share:>5.0%} "
            f"{_ratio(r.vs_control):>22} {r.verdict:>12} {_ratio(r.vs_baseline):>22} {r.baseline_verdict:>12} "
            f"{r.stock_failed:>5} {r.patched_failed:>5} {r.lost:>4}")


def summary(results: list[Result], budget_pct: float) -> dict:
    """Did the budget pace pass (or stay inconclusive, never fail) against the control in every round, clean, and
    its mean keys/s over the fastest fixed rate that did too."""
    by_config: dict[str, list[Result]] = {}
    for r in results:
        by_config.setdefault(r.config, []).append(r)

    def held(rs: list[Result]) -> bool:
        return all(r.verdict in ("pass", "inconclusive") and r.clean for r in rs)

    def mean_rate(rs: list[Result]) -> float:
        return float(np.mean([r.keys_per_s for r in rs]))
    fixed = {c: rs for c, rs in by_config.items() if c.startswith("fixed-") and held(rs)}
    best = max(fixed, key=lambda c: mean_rate(fixed[c]), default=None)
    ours = by_config.get("budget")
    out: dict = {"budget_pct": budget_pct, "fixed_held": sorted(fixed, key=lambda c: float(c.split("-")[1])),
                 "best_fixed": best}
    if ours:
        out.update(budget_held=held(ours), budget_verdicts=[r.verdict for r in ours],
                   budget_clean=all(r.clean for r in ours), budget_keys_per_s=mean_rate(ours))
        if best:
            out.update(best_fixed_keys_per_s=mean_rate(fixed[best]),
                       ratio=mean_rate(ours) / mean_rate(fixed[best]))
    return out


def print_summary(s: dict) -> None:
    if "budget_held" not in s:
        print("budget pace not run: nothing to conclude")
        return
    held = "held" if s["budget_held"] else "did NOT hold"
    print(f"budget pace: {held} +{s['budget_pct']:g} % vs the quiet spells in every round (verdicts "
          f"{', '.join(s['budget_verdicts'])}; {'0 failed, 0 lost' if s['budget_clean'] else 'FAILED or LOST'}); "
          f"{s['budget_keys_per_s']:,.0f} keys/s")
    if s.get("best_fixed"):
        ok = "meets" if s["ratio"] >= 0.8 else "misses"
        print(f"fixed rates that held in every round: {', '.join(s['fixed_held'])}; the fastest, {s['best_fixed']}, "
              f"{s['best_fixed_keys_per_s']:,.0f} keys/s: budget/fastest = {s['ratio']:.2f} ({ok} the target 0.8)")
    else:
        print("no fixed rate held in every round: nothing to compare the budget pace's keys/s with")


def jsonable(value):
    """`value` with NaN as null (JSON has no NaN) and tuples as lists."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def configurations(rates: str, only: str) -> list[str]:
    configs = ["budget", *[f"fixed-{float(r):g}" for r in rates.split(",") if r], REBALANCE, RESHARD]
    if only:
        wanted = [w.strip() for w in only.split(",")]
        budgets = [w for w in wanted if re.fullmatch(r"budget-\d+(\.\d+)?", w)]
        unknown = [w for w in wanted if w not in configs and w not in budgets]
        if unknown:
            raise SystemExit(f"unknown configuration(s) {unknown}; known: {configs}, or budget-P (the budget pace "
                             "governed and judged at +P %)")
        configs = budgets + [c for c in configs if c in wanted]
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000, help="sandbox keys (default 200000)")
    parser.add_argument("--values", choices=VALUES, default="mixed",
                        help="the data's profile (`runbook sandbox up --values`; default mixed)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration (default 3)")
    parser.add_argument("--move-s", type=float, default=48.0,
                        help="seconds each of our configurations and the reshard move slots, stopping between slots "
                             "(default 48: two quiet spells; 0: move exactly --slots)")
    parser.add_argument("--slots", type=int, default=4096, help="at most this many of the plan's slots (default "
                                                                "4096: all; rebalance moves all)")
    parser.add_argument("--rates", default="2.5,5,10,20,40", help="fixed slots/s to sweep (default 2.5,5,10,20,40)")
    parser.add_argument("--budget-pct", type=float, default=10.0, help="latency budget, %% over the control's p99 "
                                                                       "(default the article's 10)")
    parser.add_argument("--only", default="", help="comma-separated configurations to run (default all)")
    parser.add_argument("--port", type=int, default=20000, help="first sandbox port (default 20000)")
    parser.add_argument("--probe-rate", type=float, default=100.0, help="probe requests per second (default 100, "
                                                                        "the params' default)")
    parser.add_argument("--baseline-s", type=float, default=10.0,
                        help="seconds of probe at rest before the move (default 10)")
    parser.add_argument("--pause-s", type=float, default=5.0, help="pause between reshard batches (default 5)")
    parser.add_argument("--out", default="", help="write the results and the summary to this JSON file")
    parser.add_argument("--workdir", default="", help="keep each configuration's sandbox folder (journal, probe "
                                                      "records, metrics) here (default: a temporary folder)")
    parser.add_argument("--hosts", type=int, default=1, help="emulated hosts (default 1: loopback)")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round trip between hosts (default 0)")
    args = parser.parse_args()
    configs = configurations(args.rates, args.only)
    began = time.time()
    results: list[Result] = []
    print(f"{args.keys} keys ({args.values} values), 3+3 -> 4+4, {args.rounds} round(s) of {len(configs)} "
          f"configuration(s); our moves and "
          f"the reshard: {args.move_s:g} s or {args.slots} slots; probe {args.probe_rate:g} req/s; budget "
          f"+{args.budget_pct:g} %; control: quiet spells (ours), pauses between batches (reshard), none (rebalance: "
          f"baseline only); baseline: {args.baseline_s:g} s at rest before the move; "
          + (f"{args.hosts} hosts, {args.rtt_ms:g} ms round trip" if args.hosts > 1 else "loopback"), flush=True)
    print(HEADER, flush=True)
    with contextlib.nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for number in range(1, args.rounds + 1):
            shift = (number - 1) % len(configs)
            for config in configs[shift:] + configs[:shift]:
                try:
                    res = one_round(number, config, Path(tmp), args)
                except SandboxError as e:
                    raise SystemExit(f"cannot start the sandbox: {e}") from None
                results.append(res)
                print(row(res) + f"  ({res.elapsed_s:.0f} s)" + "".join(f"; {n}" for n in res.notes), flush=True)
    elapsed = time.time() - began
    print(f"\n{HEADER}")
    for r in sorted(results, key=lambda r: (configs.index(r.config), r.round)):
        print(row(r))
    print("quiet: share of the move's wall time quiet (ours: drain + tail + spell; reshard: pauses). Controls: "
          + "; ".join(f"{c}: {CONTROLS.get(c, OURS_CONTROL)}" for c in configs))
    out = summary(results, args.budget_pct)
    print_summary(out)
    print(f"elapsed {elapsed / 60:.1f} min")
    if args.out:
        report = {"args": vars(args), "elapsed_s": elapsed, "summary": out, "results": [asdict(r) for r in results]}
        Path(args.out).write_text(json.dumps(jsonable(report), indent=2))
        print(f"wrote {args.out}")
    if not math.isfinite(sum(r.keys_per_s for r in results)):
        raise SystemExit("a configuration measured no keys/s")


if __name__ == "__main__":
    main()
