"""Node metrics sampled through the whole run (CPU, memory, ops/s, replication lag) and the gates (DESIGN section 7).

A detached sampler (see `detached`) polls every node's INFO each interval and appends tidy rows (ts, node, role,
metric, value) to `metrics/samples.csv` in the run folder; `tidy()` joins them with the traffic probe's latency and
the batch numbers into one table, and `gate_values()` + `evaluate()` judge the last seconds against the thresholds.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import redis

from runbook_lib.addresses import same_address, same_node
from runbook_lib.checks import Check
from runbook_lib.cluster.connection import NodeClients
from runbook_lib.cluster.topology import read_view
from runbook_lib.config import Credentials, Gates
from runbook_lib.exceptions import BadInput, RunbookError
from runbook_lib.watch import detached, timeline
from runbook_lib.watch.traffic import PROBE_DIR, TrafficProbe, latency_stats, per_window

METRICS_DIR = "metrics"
SAMPLES_FILE = "samples.csv"
STATE_FILE = "sampler.json"
STOP_FILE = "stop"
TABLE_FILE = "metrics.csv"
COLUMNS = ["ts", "node", "role", "metric", "value"]
PROBE_METRICS = ("ops", "ops_per_s", "errors", "lost", "p50_ms", "p99_ms", "avg_ms", "max_ms")


def cpu_pct(previous: dict, current: dict, seconds: float) -> float:
    """CPU used between two INFO samples, in % of one core (Redis executes commands on one thread)."""
    used = (current["used_cpu_sys"] + current["used_cpu_user"]) - (previous["used_cpu_sys"] + previous["used_cpu_user"])
    return max(0.0, used / seconds * 100) if seconds > 0 else float("nan")


def memory_pct(info: dict) -> float:
    """used_memory against maxmemory in %, or against the host's memory when maxmemory is 0 (unlimited)."""
    limit = int(info.get("maxmemory") or 0) or int(info.get("total_system_memory") or 0)
    return int(info["used_memory"]) / limit * 100 if limit else float("nan")


def offset_time(history: list[tuple[float, int]], offset: int) -> float | None:
    """When the master's replication offset reached `offset`, interpolated in its (time, offset) history.

    None when the offset is older than the history (the replica is at least that far behind).
    """
    for (t0, o0), (t1, o1) in zip(history, history[1:]):
        if o0 <= offset <= o1:
            return t0 if o1 == o0 else t0 + (offset - o0) / (o1 - o0) * (t1 - t0)
    if history and offset >= history[-1][1]:
        return history[-1][0]
    return None


class NodePoller:
    """Polls INFO of every node of the cluster (rediscovered from the seed) and turns it into tidy rows.

    Replication lag in ms is measured, not taken from INFO's `lag` field: that field is the seconds since the
    replica's last REPLCONF ACK, which replicas send once a second, so it reads 0 or 1 on a healthy link and cannot
    resolve a 500 ms threshold. Instead each replica's own `slave_repl_offset` is read right after its master's
    `master_repl_offset`; when it is behind, the replica is polled again for up to `lag_probe_ms` until it catches
    up (lag = time from the master's reading to catching up, an upper bound), else the lag is interpolated from the
    master's offset history. `repl_ack_lag_s` keeps INFO's `lag` field as a coarse link check.
    """

    def __init__(self, seed: str, creds: Credentials, extra: list[str] | tuple = (), rediscover_s: float = 5.0,
                 lag_probe_ms: float = 100.0, timeout: float = 2.0) -> None:
        self.seed = seed
        self.creds = creds
        self.extra = list(extra)
        self.rediscover_s = rediscover_s
        self.lag_probe_ms = lag_probe_ms
        self.timeout = timeout
        self.groups: list[list[str]] = []
        self._discovered = 0.0
        self._clients = NodeClients(creds, timeout=timeout)
        self._previous: dict[str, tuple[float, dict]] = {}
        self._history: dict[str, list[tuple[float, int]]] = {}

    def _client(self, address: str) -> redis.Redis:
        return self._clients.get(address)

    def discover(self) -> list[str]:
        """Every node the cluster knows, failed ones included (each master, then its replicas), plus `extra`."""
        known = [a for group in self.groups for a in group]
        for address in dict.fromkeys([self.seed, *known]):
            try:
                view = read_view(self._client(address), address)
            except (redis.RedisError, OSError):
                continue
            entries = [e for e in view.entries.values() if not e.flags & {"handshake", "noaddr"}]
            groups = {e.id: [e.address] for e in entries if e.is_master}
            for e in entries:
                if not e.is_master:
                    groups.setdefault(e.master_id or "", []).append(e.address)
            self.groups = sorted(groups.values(), key=lambda group: group[0])
            break
        listed = {a for group in self.groups for a in group}
        self.groups += [[a] for a in self.extra if not any(same_address(a, known) for known in listed)]
        self._discovered = time.monotonic()
        return [a for group in self.groups for a in group]

    def poll(self) -> list[dict]:
        """One round over every node: tidy rows (ts, node, role, metric, value); an unreachable node gives up=0."""
        if not self.groups or time.monotonic() - self._discovered > self.rediscover_s:
            self.discover()
        rows: list[dict] = []
        masters: dict[str, tuple[float, dict]] = {}
        for group in self.groups:
            for address in group:
                rows += self._poll_node(address, masters)
        return rows

    def _poll_node(self, address: str, masters: dict[str, tuple[float, dict]]) -> list[dict]:
        ts = time.time()
        try:
            info = self._client(address).info()
        except (redis.RedisError, OSError):
            self._previous.pop(address, None)
            return [_row(ts, address, "unknown", "up", 0)]
        role = "master" if info.get("role") == "master" else "replica"
        rows = [_row(ts, address, role, "up", 1),
                _row(ts, address, role, "used_memory_bytes", int(info["used_memory"])),
                _row(ts, address, role, "maxmemory_bytes", int(info.get("maxmemory") or 0)),
                _row(ts, address, role, "instantaneous_ops_per_sec", int(info.get("instantaneous_ops_per_sec", 0)))]
        mem = memory_pct(info)
        if not math.isnan(mem):
            rows.append(_row(ts, address, role, "memory_pct", mem))
        if address in self._previous:
            t0, before = self._previous[address]
            rows.append(_row(ts, address, role, "cpu_pct", cpu_pct(before, info, ts - t0)))
            done = int(info["total_commands_processed"]) - int(before["total_commands_processed"])
            rows.append(_row(ts, address, role, "ops_per_s", max(0.0, done / (ts - t0)) if ts > t0 else 0.0))
        self._previous[address] = (ts, info)
        if role == "master":
            offset = int(info.get("master_repl_offset", 0))
            masters[address] = (ts, info)
            history = self._history.setdefault(address, [])
            history.append((ts, offset))
            del history[:-120]
            rows.append(_row(ts, address, role, "repl_offset", offset))
        else:
            rows += self._replica_rows(ts, address, info, masters)
        return rows

    def _replica_rows(self, ts: float, address: str, info: dict, masters: dict[str, tuple[float, dict]]) -> list[dict]:
        offset = int(info.get("slave_repl_offset", 0))
        link_up = info.get("master_link_status") == "up"
        rows = [_row(ts, address, "replica", "repl_offset", offset),
                _row(ts, address, "replica", "master_link_up", int(link_up))]
        master_port = int(info.get("master_port") or 0)
        master = next((a for a in masters if same_node(a, str(info.get("master_host", "")), master_port)), None)
        if master is None:
            return rows
        t_master, master_info = masters[master]
        target = int(master_info.get("master_repl_offset", 0))
        for key, value in master_info.items():
            if key.startswith("slave") and isinstance(value, dict) \
                    and same_node(address, str(value.get("ip", "")), int(value.get("port") or 0)):
                rows.append(_row(ts, address, "replica", "repl_ack_lag_s", int(value.get("lag", 0))))
        rows.append(_row(ts, address, "replica", "repl_lag_bytes", max(0, target - offset)))
        if link_up:
            rows.append(_row(ts, address, "replica", "repl_lag_ms", self._lag_ms(address, master, offset, target,
                                                                                 t_master)))
        return rows

    def _lag_ms(self, address: str, master: str, offset: int, target: int, t_master: float) -> float:
        """How far behind its master (read at t_master, at offset `target`) a replica at `offset` is, in ms."""
        if offset >= target:
            return 0.0
        deadline = t_master + self.lag_probe_ms / 1000
        while offset < target and time.time() < deadline:
            try:
                offset = int(self._client(address).info("replication").get("slave_repl_offset", 0))
            except (redis.RedisError, OSError):
                break
        waited = (time.time() - t_master) * 1000
        if offset >= target:
            return waited
        history = self._history.get(master) or [(t_master, target)]
        reached = offset_time(history, offset)
        return max(waited, (t_master - (reached if reached is not None else history[0][0])) * 1000)

    def close(self) -> None:
        self._clients.close()


def _row(ts: float, node: str, role: str, metric: str, value: float) -> dict:
    return {"ts": ts, "node": node, "role": role, "metric": metric, "value": value}


class Sampler:
    """The detached sampler of a run folder: polls every node each `interval_s` into `<run_dir>/metrics/samples.csv`.

    `extra` names nodes to sample before they join (the new masters and replicas). Stops by itself after
    `max_runtime_s`; `Sampler.attach(run_dir).stop()` stops it from any process.
    """

    def __init__(self, seed: str, creds: Credentials | None, run_dir: str | Path, interval_s: float = 1.0,
                 extra: list[str] | tuple = (), max_runtime_s: float = 12 * 3600.0) -> None:
        if interval_s <= 0:
            raise BadInput(f"sampler interval must be positive (got {interval_s})")
        self.seed = seed
        self.creds = creds
        self.interval_s = interval_s
        self.extra = list(extra)
        self.max_runtime_s = max_runtime_s
        self.dir = Path(run_dir).resolve() / METRICS_DIR
        self._proc = None

    @classmethod
    def attach(cls, run_dir: str | Path) -> "Sampler":
        """The sampler recorded in a run folder (started by this or another process)."""
        path = Path(run_dir).resolve() / METRICS_DIR / STATE_FILE
        if not path.exists():
            raise BadInput(f"no sampler was started in {Path(run_dir).resolve()} ({path} does not exist)")
        state = json.loads(path.read_text())
        return cls(state["seed"], None, run_dir, interval_s=state["interval_s"], extra=state["extra"],
                   max_runtime_s=state["max_runtime_s"])

    def state(self) -> dict:
        path = self.dir / STATE_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _marker(self) -> str:
        return f"runbook_lib.watch.metrics --dir {self.dir} "

    def alive(self) -> list[int]:
        """The sampler's pid while it runs, else an empty list."""
        if self._proc is not None:
            self._proc.poll()
        pid = self.state().get("pid")
        return [pid] if pid and detached.is_running(pid, self._marker()) else []

    def start(self, ready_timeout_s: float = 15.0) -> None:
        """Start sampling; returns after the second round (CPU and ops/s need two), or raises with the log."""
        if self.creds is None:
            raise BadInput("the sampler needs credentials to start")
        if self.alive():
            raise BadInput(f"a sampler is already running in {self.dir}; stop it first")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / STOP_FILE).unlink(missing_ok=True)
        (self.dir / "ready").unlink(missing_ok=True)
        state = {"seed": self.seed, "extra": self.extra, "interval_s": self.interval_s,
                 "max_runtime_s": self.max_runtime_s, "started": time.time(), "stopped": None}
        self._proc = detached.spawn("runbook_lib.watch.metrics", ["--dir", str(self.dir)],
                                    {"state": state, "credentials": asdict(self.creds)}, self.dir / "sampler.log")
        state["pid"] = self._proc.pid
        (self.dir / STATE_FILE).write_text(json.dumps(state, indent=2))
        deadline = time.monotonic() + ready_timeout_s
        while not (self.dir / "ready").exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop(timeout_s=2.0)
                log = (self.dir / "sampler.log").read_text(errors="replace").strip().splitlines()
                raise RunbookError(f"the metrics sampler did not start: {log[-1] if log else 'no output'} "
                                   f"(log: {self.dir / 'sampler.log'})")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> list[int]:
        """Stop sampling; returns the pid if it had to be signalled."""
        state = self.state()
        if not state:
            raise BadInput(f"no sampler was started in {self.dir}")
        killed = detached.stop([state["pid"]], self._marker(), self.dir / STOP_FILE, timeout_s)
        if self._proc is not None:
            self._proc.poll()
        state["stopped"] = state.get("stopped") or time.time()
        (self.dir / STATE_FILE).write_text(json.dumps(state, indent=2))
        return killed


def _run_sampler(metrics_dir: Path, state: dict, creds: Credentials) -> str:
    flag = detached.StopFlag(metrics_dir / STOP_FILE, deadline=state["started"] + state["max_runtime_s"],
                             heartbeat=metrics_dir.parent / detached.HEARTBEAT_FILE)
    poller = NodePoller(state["seed"], creds, extra=state["extra"])
    path = metrics_dir / SAMPLES_FILE
    new_file = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(f, fieldnames=COLUMNS)
        if new_file:
            out.writeheader()
        next_at, rounds = time.monotonic(), 0
        while not flag.is_set():
            for row in poller.poll():
                out.writerow({**row, "ts": f"{row['ts']:.6f}",
                              "value": f"{row['value']:.4f}" if isinstance(row["value"], float) else row["value"]})
            f.flush()
            rounds += 1
            if rounds == 2:
                (metrics_dir / "ready").touch()
            next_at += state["interval_s"]
            while not flag.is_set() and time.monotonic() < next_at:
                time.sleep(min(0.05, max(0.0, next_at - time.monotonic())))
            next_at = max(next_at, time.monotonic() - state["interval_s"])
    poller.close()
    return flag.reason


def read_samples(run_dir: str | Path, since: float | None = None) -> pd.DataFrame:
    """The sampler's rows (ts, node, role, metric, value), all or from `since` on."""
    path = Path(run_dir).resolve() / METRICS_DIR / SAMPLES_FILE
    df = detached.read_appended_csv(path, since, dtype={"node": str, "role": str, "metric": str}) \
        if path.exists() else pd.DataFrame()
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("ts", "value") else str) for c in COLUMNS})
    df["value"] = df["value"].astype(float)
    return df


def probe_rows(records: pd.DataFrame, window_s: float = 1.0) -> pd.DataFrame:
    """The probe's per-window statistics as tidy rows (node "probe", role "client")."""
    windows = per_window(records, window_s)
    if windows.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = windows.melt(id_vars="ts", value_vars=list(PROBE_METRICS), var_name="metric", value_name="value")
    rows["node"], rows["role"] = "probe", "client"
    return rows[COLUMNS].dropna(subset=["value"])


def tidy(run_dir: str | Path, windows: list[timeline.BatchWindow] | None = None,
         probe_window_s: float = 1.0) -> pd.DataFrame:
    """One table of the run: node samples and the probe's per-second latency, with UTC time, batch and phase."""
    parts = [read_samples(run_dir)]
    if (Path(run_dir).resolve() / PROBE_DIR / "probe.json").exists():
        parts.append(probe_rows(TrafficProbe.attach(run_dir).records(), probe_window_s))
    parts = [p for p in parts if len(p)] or parts[:1]
    table = pd.concat(parts, ignore_index=True)
    table = table.sort_values(["ts", "node", "metric"], kind="stable").reset_index(drop=True)
    table.insert(1, "utc", pd.to_datetime(table["ts"], unit="s", utc=True))
    return timeline.label(table, windows or [])


def write_table(run_dir: str | Path, windows: list[timeline.BatchWindow] | None = None) -> Path:
    """Save tidy() as metrics.csv in the run folder and return its path."""
    path = Path(run_dir).resolve() / TABLE_FILE
    tidy(run_dir, windows).to_csv(path, index=False)
    return path


def node_summary(samples: pd.DataFrame) -> pd.DataFrame:
    """Per node over the given samples: mean CPU % and ops/s, last memory % and up, max replication lag (ms)."""
    if samples.empty:
        return pd.DataFrame(columns=["node", "role", "up", "cpu_pct", "memory_pct", "ops_per_s", "repl_lag_ms",
                                     "last_ts"])
    ordered = samples.sort_values("ts", kind="stable")
    by = ordered.groupby(["node", "metric"])["value"]
    mean, last, peak = by.mean().unstack(), by.last().unstack(), by.max().unstack()
    out = pd.DataFrame(index=pd.Index(sorted(ordered["node"].unique()), name="node"))
    out["role"] = ordered[ordered["role"] != "unknown"].groupby("node")["role"].last().reindex(out.index)
    out["role"] = out["role"].fillna("unknown")
    for name, frame in (("up", last), ("cpu_pct", mean), ("memory_pct", last), ("ops_per_s", mean),
                        ("repl_lag_ms", peak)):
        out[name] = frame[name].reindex(out.index) if name in frame.columns else np.nan
    out["last_ts"] = ordered.groupby("node")["ts"].max()
    return out.reset_index()


@dataclass
class GateValues:
    """What the gates judge, over the last `window_s` seconds: the worst node for each metric, and the probe."""

    window_s: float
    nodes: int
    sample_age_s: float
    fresh: bool
    down_nodes: list[str]
    cpu_pct: float | None
    cpu_node: str
    memory_pct: float | None
    memory_node: str
    replication_lag_ms: float | None
    lag_node: str
    avg_latency_ms: float | None
    p99_latency_ms: float | None
    probe_ops: int
    per_node: list[dict] = field(default_factory=list)


def _worst(summary: pd.DataFrame, column: str) -> tuple[float | None, str]:
    values = summary[["node", column]].dropna()
    if values.empty:
        return None, ""
    row = values.loc[values[column].astype(float).idxmax()]
    return float(row[column]), str(row["node"])


def values_from(samples: pd.DataFrame, records: pd.DataFrame | None, now: float, window_s: float,
                interval_s: float = 1.0) -> GateValues:
    """GateValues from samples and probe records (pure): only rows in (now - window_s, now] count."""
    recent = samples[(samples["ts"] > now - window_s) & (samples["ts"] <= now)]
    summary = node_summary(recent)
    cpu, cpu_node = _worst(summary, "cpu_pct")
    mem, mem_node = _worst(summary, "memory_pct")
    lag, lag_node = _worst(summary, "repl_lag_ms")
    age = now - float(recent["ts"].max()) if len(recent) else float("inf")
    avg = p99 = None
    ops = 0
    if records is not None:
        window = records[(records["ts"] > now - window_s) & (records["ts"] <= now)]
        if len(window):
            stats = latency_stats(window)
            avg, p99, ops = stats["avg_ms"], stats["p99_ms"], stats["ops"]
    down = summary.loc[summary["up"] == 0, "node"].tolist()
    return GateValues(window_s=window_s, nodes=len(summary), sample_age_s=age,
                      fresh=age <= max(3 * interval_s, 3.0), down_nodes=down,
                      cpu_pct=cpu, cpu_node=cpu_node, memory_pct=mem, memory_node=mem_node,
                      replication_lag_ms=lag, lag_node=lag_node, avg_latency_ms=avg, p99_latency_ms=p99,
                      probe_ops=ops, per_node=summary.to_dict("records"))


def gate_values(run_dir: str | Path, window_s: float = 10.0, now: float | None = None,
                spans: list[tuple[float, float]] | None = None) -> GateValues:
    """GateValues of a run folder from the sampler's file and the probe's records (if a probe was started); with
    `spans`, only the probe records inside them (the times slots moved).

    With `now` in the past this gives the baseline: e.g. the window just before the first batch.
    """
    now = time.time() if now is None else now
    samples = read_samples(run_dir, since=now - window_s)
    records = None
    if (Path(run_dir).resolve() / PROBE_DIR / "probe.json").exists():
        records = TrafficProbe.attach(run_dir).records(since=now - window_s)
        if spans is not None:
            records = records[timeline.inside(records["ts"].to_numpy(float), spans)]
    state_path = Path(run_dir).resolve() / METRICS_DIR / STATE_FILE
    interval = json.loads(state_path.read_text())["interval_s"] if state_path.exists() else 1.0
    return values_from(samples, records, now, window_s, interval)


def evaluate(values: GateValues, gates: Gates, baseline_p99_ms: float | None = None,
             budget_floor_ms: float = 0.0) -> list[Check]:
    """The article's thresholds (strictly below each) and the latency budget against the baseline p99 (pure).

    Missing node samples fail (the mover must not go on blind); missing probe latency only warns, since the probe
    is optional against production. `budget_floor_ms` widens the budget to at least baseline + that much: a
    sub-millisecond p99 varies by more than 10 % between quiet windows.
    """
    checks = [Check("fresh samples", "pass" if values.fresh and values.nodes else "fail",
                    f"{values.nodes} nodes sampled, newest sample {values.sample_age_s:.1f} s old"
                    if values.nodes else "no node samples in the window; is the sampler running?"),
              Check("all nodes up", "fail" if values.down_nodes else "pass",
                    "down: " + ", ".join(values.down_nodes) if values.down_nodes else f"{values.nodes} nodes answered")]
    w = f"{values.window_s:.0f} s"
    checks.append(_threshold("CPU", values.cpu_pct, gates.cpu_pct, "%", f"mean over {w}, worst node {values.cpu_node}",
                             missing="fail"))
    checks.append(_threshold("memory", values.memory_pct, gates.memory_pct, "%", f"of maxmemory, worst node "
                             f"{values.memory_node}", missing="fail"))
    checks.append(_threshold("replication lag", values.replication_lag_ms, gates.replication_lag_ms, "ms",
                             f"max over {w}, worst replica {values.lag_node}", missing="warn",
                             why_missing="no replica sampled"))
    probe = f"traffic probe, {values.probe_ops} requests over {w}"
    checks.append(_threshold("average latency", values.avg_latency_ms, gates.avg_latency_ms, "ms", probe))
    checks.append(_threshold("p99 latency", values.p99_latency_ms, gates.p99_latency_ms, "ms", probe))
    if values.p99_latency_ms is None or baseline_p99_ms is None:
        checks.append(Check(f"p99 within {gates.latency_budget_pct:g} % of baseline", "warn",
                            "not measured: " + ("no baseline" if baseline_p99_ms is None else "no probe latency")))
    else:
        limit = max(baseline_p99_ms * (1 + gates.latency_budget_pct / 100), baseline_p99_ms + budget_floor_ms)
        checks.append(Check(f"p99 within {gates.latency_budget_pct:g} % of baseline",
                            "pass" if values.p99_latency_ms <= limit else "fail",
                            f"p99 {values.p99_latency_ms:.2f} ms, baseline {baseline_p99_ms:.2f} ms, "
                            f"limit {limit:.2f} ms"))
    return checks


def _threshold(name: str, value: float | None, limit: float, unit: str, where: str, missing: str = "warn",
               why_missing: str = "not measured (is the probe running?)") -> Check:
    title = f"{name} < {limit:g} {unit}"
    if value is None or value != value:
        return Check(title, missing, why_missing if missing == "warn" else f"no {name} samples in the window")
    return Check(title, "pass" if value < limit else "fail", f"{value:.2f} {unit} ({where})")


def _sampler_main(argv: list[str]) -> int:
    """Entry point of the detached sampler: `python -m runbook_lib.watch.metrics --dir <metrics dir>`."""
    metrics_dir = Path(dict(zip(argv[::2], argv[1::2]))["--dir"])
    return detached.run_main("sampler", lambda payload: _run_sampler(metrics_dir, payload["state"],
                                                                     Credentials(**payload["credentials"])))


if __name__ == "__main__":
    sys.exit(_sampler_main(sys.argv[1:]))
