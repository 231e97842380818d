"""The watchers of a run: the metrics sampler and the traffic probe, started, found and stopped, the latency baseline,
and the watch slots move under.

The sampler runs from 40_migrate until the end of the run, the probe (when params enable it) from before the first
batch until after validation; both are detached processes recorded in the run folder, so any later notebook, the
runner or the CLI can stop them. `runbook resume` and `runbook rollback` move slots under the same watch (`watch`):
they stop what an interrupted run left running in its folder (`running` finds it), start fresh watchers when the first
batch is about to move (`WatchWhenMoving`), and stop them when they end.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from runbook_lib.cluster.journal import Journal
from runbook_lib.config import Gates, Params, new_node_addresses
from runbook_lib.watch import detached
from runbook_lib.watch.metrics_table import write_table
from runbook_lib.watch.pace import governor
from runbook_lib.watch.probe import PROBE_DIR, TrafficProbe
from runbook_lib.watch.probe import STATE_FILE as PROBE_STATE
from runbook_lib.watch.probe_stats import ProbeSummary, latency_stats
from runbook_lib.watch.sampler import METRICS_DIR, Sampler
from runbook_lib.watch.sampler import STATE_FILE as SAMPLER_STATE
from runbook_lib.watch.throttle import Throttle, run_gate
from runbook_lib.watch.timeline import batch_windows
from runbook_lib.watch.verdict import bootstrap_quantile
from runbook_lib.watch.window import windowed

if TYPE_CHECKING:
    from runbook_lib.cluster.mover import Pace

BASELINE_FILE = "latency_baseline.json"


BASELINE_SPREAD = 0.10


BASELINE_GROWTH = 3.0


def start(params: Params, run_dir: Path, extra_nodes: list[str]) -> dict[str, str]:
    """Start the sampler, and the probe when params enable it, unless they already run for this run folder."""
    status = {}
    detached.start_heartbeat(run_dir, detached.idle_limit_s())
    if (run_dir / METRICS_DIR / SAMPLER_STATE).exists() and Sampler.attach(run_dir).alive():
        status["sampler"] = "already running"
    else:
        Sampler(params.model.cluster.seed, params.credentials(), run_dir, extra=extra_nodes).start()
        status["sampler"] = "started"
    if not params.model.probe.enabled:
        status["probe"] = "disabled in params (probe.enabled: false)"
    elif probe_running(run_dir):
        status["probe"] = "already running"
    else:
        TrafficProbe.from_params(params, run_dir).start()
        status["probe"] = f"started at {params.model.probe.rate:g} ops/s"
    return status


def has_probe(run_dir: Path) -> bool:
    """Whether a traffic probe was ever started in this run folder."""
    return (run_dir / PROBE_DIR / PROBE_STATE).exists()


def probe_running(run_dir: Path) -> bool:
    return has_probe(run_dir) and bool(TrafficProbe.attach(run_dir).alive())


def baseline(run_dir: Path, gates: Gates) -> dict:
    """The probe's latency before the first batch, measured once per run folder: `gates.baseline_s`, grown by half
    that at a time (up to BASELINE_GROWTH times it) until the p99's 95 % bootstrap interval is within
    BASELINE_SPREAD of it, so that the verdict can judge a +10 % change."""
    path = run_dir / BASELINE_FILE
    if path.exists():
        return json.loads(path.read_text())
    if not probe_running(run_dir):
        return {"p50_ms": None, "p99_ms": None, "avg_ms": None, "ops": 0, "note": "no probe running"}
    start = time.time()
    time.sleep(gates.baseline_s)
    while True:
        now = time.time()
        records = TrafficProbe.attach(run_dir).records(since=start)
        width = p99_spread(records["latency_ms"].to_numpy(float))
        if width <= BASELINE_SPREAD or now - start >= gates.baseline_s * BASELINE_GROWTH:
            break
        time.sleep(gates.baseline_s / 2)
    stats = latency_stats(records, seconds=now - start)
    data = {k: stats[k] for k in ("p50_ms", "p99_ms", "avg_ms", "ops", "ops_per_s", "errors")} | {
        "ts": now, "since": start, "p99_spread": width}
    path.write_text(json.dumps(data, indent=2))
    return data


def p99_spread(values: np.ndarray) -> float:
    """Width of the p99's 95 % bootstrap interval relative to the p99 (inf with too few samples to tell)."""
    if len(values) < 200:
        return float("inf")
    replicates = bootstrap_quantile(values, 0.99, n_boot=400)
    p99 = float(np.percentile(values, 99))
    low, high = np.percentile(replicates, [2.5, 97.5])
    return float((high - low) / p99) if p99 > 0 else float("inf")


def finish_probe(params: Params, run_dir: Path) -> ProbeSummary | None:
    """Stop the probe, read back every acknowledged write, delete the probe's keys; None when no probe ran. Once its
    keys are deleted, the summary of that verification is the answer (a re-run of 60_validate gives the same verdict,
    instead of finding every deleted write lost)."""
    if not has_probe(run_dir):
        return None
    probe = TrafficProbe.attach(run_dir, params.credentials())
    done = probe.verified()
    if done is not None:
        return done
    probe.stop()
    summary = probe.verify()
    probe.cleanup()
    return summary


def discard_probe(params: Params, run_dir: Path) -> int:
    """Stop the run's probe and delete every key it wrote (rollback returns the keyspace to what it was)."""
    if not has_probe(run_dir):
        return 0
    probe = TrafficProbe.attach(run_dir, params.credentials())
    probe.stop()
    return probe.cleanup()


def running(run_dir: Path) -> dict[str, list[int]]:
    """The watcher processes of this run folder that still run, by name ("probe", "sampler"): the pids recorded in
    their state files, each confirmed by its command line naming this folder (a reused pid is not counted)."""
    found = {}
    if has_probe(run_dir):
        pids = TrafficProbe.attach(run_dir).alive()
        if pids:
            found["probe"] = pids
    if (run_dir / METRICS_DIR / SAMPLER_STATE).exists():
        pids = Sampler.attach(run_dir).alive()
        if pids:
            found["sampler"] = pids
    return found


def describe(found: dict[str, list[int]]) -> str:
    """Watchers as `running` returns them, for a sentence: "the traffic probe (pids 1, 2) and the metrics sampler (pid
    3)"."""
    names = {"probe": "the traffic probe", "sampler": "the metrics sampler"}
    return " and ".join(f"{names.get(n, n)} (pid{'s' if len(p) > 1 else ''} {', '.join(map(str, p))})"
                        for n, p in found.items())


def stop_leftovers(run_dir: Path, acting: bool) -> str:
    """Stop (or, in a dry run, only name) the probe and sampler an interrupted run left running in its folder: they
    are not ours to adopt, and fresh ones start for the slots moved now. Returns what was found, as a sentence for the
    operator ("" when nothing ran)."""
    found = running(run_dir)
    if not found:
        return ""
    if acting:
        stop_all(run_dir)
    return (f"{'stopped' if acting else 'would stop'} {describe(found)}, still running from the interrupted run in "
            "this run folder")


def stop_all(run_dir: Path) -> list[str]:
    """Stop whatever still runs for this run folder (the runner calls this when a run ends or fails)."""
    found = running(run_dir)
    if "probe" in found:
        TrafficProbe.attach(run_dir).stop()
    if "sampler" in found:
        Sampler.attach(run_dir).stop()
    detached.end_heartbeat(run_dir)
    return list(found)


def save_metrics(run_dir: Path) -> Path | None:
    """The tidy metrics table (every node, the probe, labelled by batch) as metrics.csv in the run folder."""
    if not (run_dir / METRICS_DIR / SAMPLER_STATE).exists():
        return None
    return write_table(run_dir, batch_windows(Journal(run_dir / "journal.jsonl").entries()))


@dataclass
class Watch:
    """One piece of cluster work under watch: what was started (or found running), the latency baseline, and the
    pace the mover moves at (the budget governor, or the throttle of a fixed pace; its `decisions` are charted)."""

    throttle: "Pace"
    baseline: dict
    started: dict[str, str]


def watch(params: Params, run_dir: Path, journal: Journal) -> Watch:
    """The watch 40_migrate, `runbook resume` and `runbook rollback` move slots under: the sampler and probe started
    (kept when they already run for this folder), the latency baseline measured once per run folder, and a throttle
    over the params' gates, to pass to the mover: the budget governor for `migration.pace: budget`, else the
    throttle of a fixed pace."""
    gates, settings = params.model.gates, params.model.migration
    started = start(params, run_dir, new_node_addresses(params))
    base = baseline(run_dir, gates)
    if settings.pace == "budget":
        pace = governor(settings, gates, run_dir, journal, base)
    else:
        pace = Throttle(settings, run_gate(run_dir, gates, base["p99_ms"], gates.window_s), journal,
                        pause_after_s=gates.pause_after_s)
    return Watch(throttle=windowed(pace, settings.window, journal), baseline=base, started=started)


def watching(watch: Watch) -> str:
    """What a watch started, its latency baseline and that it gates every batch, as a line for the operator."""
    base = watch.baseline.get("p99_ms")
    return ("watching: " + ", ".join(f"{name} {state}" for name, state in watch.started.items())
            + (f"; latency baseline p99 {base:.2f} ms" if base else "") + "; every batch gated by the throttle")


class WatchWhenMoving:
    """A pace for the mover (its `before_batch`) that sets up `watch` just before the first batch, so the watchers
    start only when slots really move (a resume that only repairs, or stops at another tool's open slot, starts
    none), then gates every batch with the watch's throttle. `on_start` is told of the watch once it runs."""

    def __init__(self, params: Params, run_dir: Path, journal: Journal,
                 on_start: Callable[[Watch], None] | None = None) -> None:
        self.params, self.run_dir, self.journal, self.on_start = params, run_dir, journal, on_start
        self.watch: Watch | None = None

    def before_batch(self, number: int):
        if self.watch is None:
            self.watch = watch(self.params, self.run_dir, self.journal)
            if self.on_start is not None:
                self.on_start(self.watch)
        return self.watch.throttle.before_batch(number)

    def before_group(self):
        return self.watch.throttle.before_group()

    def idle(self) -> AbstractContextManager[None]:
        return nullcontext() if self.watch is None else self.watch.throttle.idle()

    def end(self) -> None:
        if self.watch is not None:
            self.watch.throttle.end()
