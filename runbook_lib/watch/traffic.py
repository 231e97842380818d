"""The traffic probe (DESIGN section 6): client processes that write unique keys, read acknowledged ones back and record
every operation's latency and outcome, so that a run can show its latency, its errors and that no write was lost.

Workers are detached processes (see `detached`): a probe started in one notebook keeps running while other cells and
other notebooks run, and `TrafficProbe.attach(run_dir)` stops and verifies it from anywhere. Each worker appends its
records to `probe/worker-<n>.csv` in the run folder; the statistics below are pure functions of those records.

Records (COLUMNS), one per request:
- `ts`: the request's scheduled send time (epoch seconds), from the worker's pacing loop, not when it was sent;
- `latency_ms`: scheduled send time to reply. No coordinated omission: when a worker stalls on one slow request, the
  requests it should have sent meanwhile are sent late (back to back, none dropped) and each counts from its
  scheduled time, so a stall of T ms at R requests/s shows as about T*R/1000 slow samples, not one;
- `service_ms`: actual send to reply (what a closed-loop probe would report);
- `client`: "patched" (AskSafeCluster) or "stock" (redis-py RedisCluster exactly as applications configure it; its
  failures are what applications see);
- `node`: host:port of the master the client routed the key to (its slot table, before the call), for downtime per
  master; a redirect may have served it elsewhere;
- `worker`, `op` (set/get), `key`, `outcome` (ok, lost, wrong or a failure kind from `classify`), `error`, `note`.
Files written before `service_ms`, `client` and `node` existed read as patched, service_ms = latency_ms, node "".
"""

from __future__ import annotations

import csv
import json
import random
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import redis
from pydantic import ValidationError
from redis.cluster import PRIMARY, ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from runbook_lib.checks import Check
from runbook_lib.cluster.connection import cluster_client
from runbook_lib.config import Credentials, Params, Probe
from runbook_lib.exceptions import BadInput, RunbookError
from runbook_lib.watch import detached
from runbook_lib.watch.timeline import BatchWindow

PROBE_DIR = "probe"
STATE_FILE = "probe.json"
STOP_FILE = "stop"
SUMMARY_FILE = "summary.json"
COLUMNS = ["ts", "worker", "op", "key", "latency_ms", "outcome", "error", "note", "service_ms", "client", "node"]
PATCHED, STOCK = "patched", "stock"
CLIENTS = (PATCHED, STOCK)
SERVED = ("ok", "lost", "wrong")
DATA_ERRORS = ("lost", "wrong")
ASK_UNKNOWN_NODE = "ask-unknown-node"
TTL_MARGIN_S = 60.0


class AskSafeCluster(RedisCluster):
    """A RedisCluster that follows an ASK redirect to a node it does not know yet (redis-py#4015, open in 8.1).

    Cause, in redis/cluster.py: on ASK, `_execute_command` looks the target up with `get_node(node_name="host:port")`
    in its nodes cache, which `NodesManager.initialize()` fills from CLUSTER SLOTS only. A master that owns no slot yet
    (a new master importing its first slots) is not in CLUSTER SLOTS, so the lookup returns None and
    `get_redis_connection(None)` raises AttributeError: 'NoneType' object has no attribute 'redis_connection';
    refreshing the tables cannot help, for the same reason. Workaround: while a command executes (the ASK lookup is
    the only lookup by name there), an unknown node named host:port is registered as a primary, as redis-py already
    does for the target of a MOVED, so the ASK is followed: ASKING, then the command, on that node. The slot table is
    left alone (an ASK is one-shot) and the next refresh drops the entry; outside commands `get_node` is unchanged.
    `ask_unknown_targets` counts these events. Pipelines of this client are plain ClusterPipelines, not covered:
    retry their failed commands through the client.
    """

    ask_unknown_targets = 0

    def __init__(self, *args, **kwargs) -> None:
        self._executing = threading.local()
        super().__init__(*args, **kwargs)

    def _execute_command(self, target_node, *args, **kwargs):
        self._executing.active = True
        try:
            return super()._execute_command(target_node, *args, **kwargs)
        finally:
            self._executing.active = False

    def get_node(self, host: str | None = None, port: int | None = None,
                 node_name: str | None = None) -> ClusterNode | None:
        node = super().get_node(host, port, node_name)
        if node is None and node_name and getattr(self._executing, "active", False):
            node = self._learn_node(node_name)
        return node

    def _learn_node(self, node_name: str) -> ClusterNode | None:
        """Register the node an ASK names (host:port) as a primary, like redis-py does for a MOVED target."""
        host, sep, port = node_name.rpartition(":")
        if not sep or not port.isdigit():
            return None
        manager = self.nodes_manager
        with manager._lock:
            node = manager.nodes_cache.setdefault(node_name, ClusterNode(host, int(port), PRIMARY))
        self.ask_unknown_targets += 1
        return node


def ask_safe_client(seeds: list[str], creds: Credentials, timeout: float = 5.0) -> AskSafeCluster:
    """A cluster client like `connection.cluster_client`, with the ASK workaround of AskSafeCluster."""
    client = cluster_client(seeds, creds, timeout=timeout, client_class=AskSafeCluster)
    assert isinstance(client, AskSafeCluster)
    return client


def classify(error: BaseException) -> str:
    """The kind of a failed request, for counting: timeout, connection, clusterdown, tryagain, redirect, ..."""
    if isinstance(error, redis.TimeoutError):
        return "timeout"
    if isinstance(error, redis.ConnectionError):
        return "connection"
    if isinstance(error, ClusterDownError):
        return "clusterdown"
    if isinstance(error, TryAgainError):
        return "tryagain"
    if isinstance(error, AskError):
        return "redirect"
    if isinstance(error, ClusterError):
        return "redirect_loop" if "TTL exhausted" in str(error) else "cluster"
    if isinstance(error, SlotNotCoveredError):
        return "slot_not_covered"
    if isinstance(error, redis.ResponseError):
        return "response"
    if isinstance(error, AttributeError) and "redis_connection" in str(error):
        return ASK_UNKNOWN_NODE
    if isinstance(error, (redis.RedisError, RedisClusterException)):
        return "redis"
    return type(error).__name__


def _settings(rate: float, processes: int, prefix: str, ttl_s: int, read_ratio: float,
              stock_processes: int = 1) -> Probe:
    try:
        return Probe(enabled=True, rate=float(rate), processes=processes, prefix=prefix, ttl_s=ttl_s,
                     read_ratio=float(read_ratio), stock_processes=stock_processes)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(map(str, err["loc"]))
        raise BadInput(f"traffic probe: {key}: {err['msg']} (got {err['input']!r})") from None


@dataclass
class ProbeSummary:
    """What the probe saw and what verify() found: requests, failures by kind and by client, lost writes, latency,
    longest gap (cluster-wide and per master).

    `errors` counts every failed request, the stock clients' included: they are what applications see.
    `errors_by_client` is {"patched": {kind: n}, "stock": {kind: n}} for every client kind that ran;
    `longest_gap_by_node` and `longest_unanswered_by_node` are {host:port: [seconds, start]} (see
    `longest_gap_per_node` and `longest_unanswered_per_node`).
    """

    started: float
    ended: float
    ops: int
    writes: int
    reads: int
    errors: int
    errors_by_kind: dict[str, int]
    lost_reads: int
    wrong_reads: int
    acknowledged_writes: int
    verified_writes: int
    lost_writes: list[str]
    wrong_writes: list[str]
    unverifiable_writes: int
    p50_ms: float
    p99_ms: float
    avg_ms: float
    max_ms: float
    ops_per_s: float
    longest_gap_s: float
    longest_gap_at: float
    ask_unknown_node_handled: int
    killed_workers: list[int] = field(default_factory=list)
    p999_ms: float = float("nan")
    ops_by_client: dict[str, int] = field(default_factory=dict)
    errors_by_client: dict[str, dict[str, int]] = field(default_factory=dict)
    longest_gap_by_node: dict[str, list[float]] = field(default_factory=dict)
    longest_unanswered_by_node: dict[str, list[float]] = field(default_factory=dict)

    @property
    def stock_errors(self) -> int:
        """Failed requests of the stock-client workers."""
        return sum(self.errors_by_client.get(STOCK, {}).values())

    @property
    def ok(self) -> bool:
        return not (self.errors or self.lost_reads or self.wrong_reads or self.lost_writes or self.wrong_writes)

    def checks(self) -> list[Check]:
        """Verdicts for the report: no failed request (stock clients' included), no lost or wrong write, stock
        clients measured, every worker stopped cleanly."""
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.errors_by_kind.items()))
        lost = self.lost_writes + self.wrong_writes
        by_client = "; ".join(
            f"{client} clients: {sum(kinds_.values())} of {self.ops_by_client.get(client, 0)} failed"
            + (f" ({', '.join(f'{k}: {n}' for k, n in sorted(kinds_.items()))})" if kinds_ else "")
            for client, kinds_ in sorted(self.errors_by_client.items()))
        stock_ops = self.ops_by_client.get(STOCK, 0)
        return [
            Check("probe: no failed request", "fail" if self.errors else "pass",
                  f"{self.ops} requests, {self.errors} failed" + (f" ({kinds})" if kinds else "")
                  + (f"; {by_client}" if by_client and self.errors else "")
                  + (f"; {self.ask_unknown_node_handled} ASK redirects to a not-yet-known node handled by the "
                     "patched clients" if self.ask_unknown_node_handled else "")),
            Check("probe: no lost write", "fail" if lost or self.lost_reads or self.wrong_reads else "pass",
                  f"{self.verified_writes} of {self.acknowledged_writes} acknowledged writes read back; "
                  f"{len(self.lost_writes)} missing, {len(self.wrong_writes)} wrong; during the run "
                  f"{self.lost_reads} reads found a key missing and {self.wrong_reads} a wrong value"
                  + (f"; first: {lost[0]}" if lost else "")
                  + (f"; {self.unverifiable_writes} older than the TTL not checked"
                     if self.unverifiable_writes else "")),
            Check("probe: stock clients measured", "pass" if stock_ops else "warn",
                  f"{stock_ops} requests from stock redis-py RedisCluster workers, {self.stock_errors} failed"
                  if stock_ops else "no stock-client request was recorded (probe.stock_processes: 0?): the failures "
                  "an application with an unpatched client would see were not measured"),
            Check("probe: workers stopped cleanly", "warn" if self.killed_workers else "pass",
                  "every worker stopped on request" if not self.killed_workers
                  else f"workers {self.killed_workers} had to be signalled; their last records may be missing"),
        ]

    def to_dict(self) -> dict:
        """JSON-able (NaN, where nothing was measured, becomes None)."""
        return {**{k: _json_safe(v) for k, v in asdict(self).items()}, "stock_errors": self.stock_errors,
                "ok": self.ok}

    @classmethod
    def from_dict(cls, data: dict) -> "ProbeSummary":
        """The summary `to_dict` wrote (None back to NaN where a float was not measured)."""
        kinds = {f.name: f.type for f in fields(cls)}
        return cls(**{k: (float("nan") if v is None and kinds[k] == "float" else v)
                      for k, v in data.items() if k in kinds})


def _json_safe(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class TrafficProbe:
    """Probe traffic against a cluster from detached worker processes, recorded under `<run_dir>/probe/`.

    `processes` workers use the patched AskSafeCluster, `stock_processes` more use stock redis-py RedisCluster (as
    `connection.cluster_client` makes it for applications); workers 0..processes-1 are patched, the rest stock.
    `rate` is the total operations per second over all of them; keys are `<prefix><token>:<worker>:<seq>` (no
    hash tag, so they spread over all slots), written with SET ... EX ttl_s and value seq; `read_ratio` of the
    operations read a random acknowledged key back. Workers stop by themselves after `max_runtime_s`.
    """

    def __init__(self, seeds: list[str], creds: Credentials | None, run_dir: str | Path, rate: float = 200.0,
                 processes: int = 2, prefix: str = "runbook:probe:", ttl_s: int = 3600, read_ratio: float = 0.5,
                 timeout_s: float = 2.0, max_runtime_s: float = 6 * 3600.0, stock_processes: int = 1) -> None:
        if not seeds:
            raise BadInput("traffic probe: give at least one seed address")
        self.seeds = list(seeds)
        self.creds = creds
        self.settings = _settings(rate, processes, prefix, ttl_s, read_ratio, stock_processes)
        self.timeout_s = timeout_s
        self.max_runtime_s = max_runtime_s
        self.dir = Path(run_dir).resolve() / PROBE_DIR
        self._procs: list[subprocess.Popen] = []

    @classmethod
    def from_params(cls, params: Params, run_dir: str | Path, seeds: list[str] | None = None) -> "TrafficProbe":
        """A probe with the params file's `probe` settings and credentials (seeds default to the params seed)."""
        p = params.model.probe
        return cls(seeds or [params.model.cluster.seed], params.credentials(), run_dir, rate=p.rate,
                   processes=p.processes, prefix=p.prefix, ttl_s=p.ttl_s, read_ratio=p.read_ratio,
                   stock_processes=p.stock_processes)

    @classmethod
    def attach(cls, run_dir: str | Path, creds: Credentials | None = None) -> "TrafficProbe":
        """The probe recorded in a run folder, started by this or another process; verify() and cleanup() need creds."""
        path = Path(run_dir).resolve() / PROBE_DIR / STATE_FILE
        if not path.exists():
            raise BadInput(f"no traffic probe was started in {Path(run_dir).resolve()} ({path} does not exist)")
        state = json.loads(path.read_text())
        s = state["settings"]
        return cls(state["seeds"], creds, run_dir, rate=s["rate"], processes=s["processes"], prefix=s["prefix"],
                   ttl_s=s["ttl_s"], read_ratio=s["read_ratio"], timeout_s=state["timeout_s"],
                   max_runtime_s=state["max_runtime_s"], stock_processes=s.get("stock_processes", 0))

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def clients(self) -> list[str]:
        """Each worker's client kind, by worker number: the patched ones first, then the stock ones."""
        return [PATCHED] * self.settings.processes + [STOCK] * self.settings.stock_processes

    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def _write_state(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def _marker(self) -> str:
        return f"runbook_lib.watch.traffic --dir {self.dir} "

    def alive(self) -> list[int]:
        """Pids of this probe's workers that are still running."""
        for proc in self._procs:
            proc.poll()
        return [p for p in self.state().get("pids", []) if detached.is_running(p, self._marker())]

    def start(self, ready_timeout_s: float = 15.0) -> None:
        """Start the workers and return once each one is connected and sending; raise with its log if one fails."""
        if self.creds is None:
            raise BadInput("the traffic probe needs credentials to start")
        if self.alive():
            raise BadInput(f"a traffic probe is already running in {self.dir}; stop it first")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / STOP_FILE).unlink(missing_ok=True)
        for old in self.dir.glob("worker-*.ready"):
            old.unlink()
        started = time.time()
        state = {"seeds": self.seeds, "settings": self.settings.model_dump(), "token": secrets.token_hex(3),
                 "timeout_s": self.timeout_s, "max_runtime_s": self.max_runtime_s, "started": started,
                 "stopped": None, "pids": [], "clients": self.clients}
        payload = {"state": state, "credentials": asdict(self.creds)}
        self._procs = [detached.spawn("runbook_lib.watch.traffic", ["--dir", str(self.dir), "--worker", str(i)], payload,
                                      self.dir / f"worker-{i}.log") for i in range(len(self.clients))]
        state["pids"] = [p.pid for p in self._procs]
        self._write_state(state)
        deadline = time.monotonic() + ready_timeout_s
        for i, proc in enumerate(self._procs):
            while not (self.dir / f"worker-{i}.ready").exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop(timeout_s=2.0)
                    log = (self.dir / f"worker-{i}.log").read_text(errors="replace").strip().splitlines()
                    why = log[-1] if log else "no output"
                    raise RunbookError(f"traffic probe worker {i} did not start: {why} "
                                       f"(log: {self.dir / f'worker-{i}.log'})")
                time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> list[int]:
        """Stop the workers (they finish their current request and flush); returns pids that had to be signalled."""
        state = self.state()
        if not state:
            raise BadInput(f"no traffic probe was started in {self.dir}")
        killed = detached.stop(state.get("pids", []), self._marker(), self.dir / STOP_FILE, timeout_s)
        for proc in self._procs:
            proc.poll()
        state["stopped"] = state.get("stopped") or time.time()
        state["killed"] = sorted(set(state.get("killed", [])) | set(killed))
        self._write_state(state)
        return killed

    def records(self, since: float | None = None) -> pd.DataFrame:
        """Every operation recorded so far (or since a time), oldest first; safe to call while workers write."""
        frames = [read_records(p, since) for p in sorted(self.dir.glob("worker-*.csv"))]
        frames = [f for f in frames if len(f)]
        if not frames:
            return _empty_records()
        return pd.concat(frames, ignore_index=True).sort_values("ts", kind="stable").reset_index(drop=True)

    def _client(self) -> AskSafeCluster:
        if self.creds is None:
            raise BadInput("verify() and cleanup() need credentials: TrafficProbe.attach(run_dir, creds)")
        return ask_safe_client(self.seeds, self.creds, timeout=max(self.timeout_s, 5.0))

    def verify(self, chunk: int = 500) -> ProbeSummary:
        """Read back every acknowledged write (pipelined) and summarise the run; writes probe/summary.json."""
        if self.alive():
            raise BadInput("the traffic probe is still running; stop() it before verify()")
        records = self.records()
        acked = records[(records["op"] == "set") & (records["outcome"] == "ok")]
        fresh = acked[acked["ts"] + self.settings.ttl_s - TTL_MARGIN_S > time.time()]
        client = self._client()
        lost, wrong = [], []
        try:
            keys = fresh["key"].tolist()
            for i in range(0, len(keys), chunk):
                part = keys[i:i + chunk]
                for key, value in zip(part, _get_many(client, part)):
                    if value is None:
                        lost.append(key)
                    elif value != key.rsplit(":", 1)[1]:
                        wrong.append(f"{key}={value!r}")
        finally:
            client.close()
        summary = summarize(records, acknowledged=len(acked), verified=len(fresh) - len(lost) - len(wrong),
                            lost_writes=lost, wrong_writes=wrong, killed=self.state().get("killed", []))
        (self.dir / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2))
        return summary

    def verified(self) -> ProbeSummary | None:
        """The summary of the verification whose keys `cleanup` then deleted, or None when the probe's keys were not
        deleted since it started: read back after cleanup, every write would look lost."""
        state = self.state()
        path = self.dir / SUMMARY_FILE
        if not state.get("cleaned") or not path.exists():
            return None
        return ProbeSummary.from_dict(json.loads(path.read_text()))

    def cleanup(self, chunk: int = 500) -> int:
        """Delete every key the probe tried to write (acknowledged or not); returns how many existed."""
        if self.alive():
            raise BadInput("the traffic probe is still running; stop() it before cleanup()")
        records = self.records()
        keys = records.loc[records["op"] == "set", "key"].drop_duplicates().tolist()
        client = self._client()
        deleted = 0
        try:
            for i in range(0, len(keys), chunk):
                pipe = client.pipeline(transaction=False)
                part = keys[i:i + chunk]
                for key in part:
                    pipe.delete(key)
                for key, result in zip(part, pipe.execute(raise_on_error=False)):
                    deleted += int(client.delete(key) if isinstance(result, Exception) else result)
        finally:
            client.close()
        state = self.state()
        state["cleaned"] = time.time()
        self._write_state(state)
        return deleted


def _get_many(client: AskSafeCluster, keys: list[str]) -> list[str | None]:
    """GET through a cluster pipeline; what the pipeline failed (an ASK to an unknown node) goes through the client."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    results = pipe.execute(raise_on_error=False)
    return [client.get(k) if isinstance(r, Exception) else r for k, r in zip(keys, results)]


def _empty_records() -> pd.DataFrame:
    return pd.DataFrame({"ts": pd.Series(dtype=float), "worker": pd.Series(dtype=int), "op": pd.Series(dtype=str),
                         "key": pd.Series(dtype=str), "latency_ms": pd.Series(dtype=float),
                         "outcome": pd.Series(dtype=str), "error": pd.Series(dtype=str),
                         "note": pd.Series(dtype=str), "service_ms": pd.Series(dtype=float),
                         "client": pd.Series(dtype=str), "node": pd.Series(dtype=str)})


TEXT_COLUMNS = ("op", "key", "outcome", "error", "note", "client", "node")


def read_records(path: Path, since: float | None = None) -> pd.DataFrame:
    """One worker's records (complete lines only), all of them or those from `since` on (read from the file's end).

    A file written before `service_ms`, `client` and `node` existed gets them: service_ms = latency_ms (then the only
    measure), client "patched" (then the only kind), node "" (unknown)."""
    df = detached.read_appended_csv(path, since, dtype={c: str for c in TEXT_COLUMNS})
    if df.empty:
        return _empty_records()
    df["latency_ms"] = df["latency_ms"].astype(float)
    df["service_ms"] = df["service_ms"].astype(float) if "service_ms" in df.columns else df["latency_ms"]
    df["client"] = _text(df, "client", PATCHED)
    df["node"] = _text(df, "node", "")
    return df[COLUMNS]


def _text(records: pd.DataFrame, column: str, default: str) -> pd.Series:
    """A text column with `default` where it is missing or empty (NaN), whatever dtype pandas gave it."""
    if column not in records.columns:
        return pd.Series(default, index=records.index, dtype=object)
    values = records[column].astype(object)
    return values.where(values.notna(), default).astype(str)


def clients_of(records: pd.DataFrame) -> pd.Series:
    """Each record's client kind; records without one (built before the column existed) are patched."""
    return _text(records, "client", PATCHED)


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def latency_stats(records: pd.DataFrame, seconds: float | None = None) -> dict:
    """ops, errors (failed requests), lost (missing or wrong values), p50/p99/p99.9/avg/max latency (ms) and ops/s.

    Latency (`latency_ms`: from the scheduled send time) covers every request, failed ones and stock clients' too;
    ops/s is over `seconds`, or over the records' own span.
    """
    lat = records["latency_ms"].to_numpy(dtype=float)
    outcome = records["outcome"]
    if seconds is None:
        seconds = float(records["ts"].max() - records["ts"].min()) if len(records) > 1 else float("nan")
    return {
        "ops": int(len(records)),
        "errors": int((~outcome.isin(SERVED)).sum()),
        "lost": int(outcome.isin(DATA_ERRORS).sum()),
        "p50_ms": _percentile(lat, 50),
        "p99_ms": _percentile(lat, 99),
        "p999_ms": _percentile(lat, 99.9),
        "avg_ms": float(lat.mean()) if len(lat) else float("nan"),
        "max_ms": float(lat.max()) if len(lat) else float("nan"),
        "ops_per_s": len(records) / seconds if seconds and seconds > 0 else float("nan"),
    }


def error_kinds(records: pd.DataFrame) -> dict[str, int]:
    """Failed requests by kind (lost and wrong reads are data errors, counted apart)."""
    failed = records.loc[~records["outcome"].isin(SERVED), "outcome"]
    return {str(k): int(n) for k, n in failed.value_counts().sort_index().items()}


def error_kinds_by_client(records: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Failed requests by client kind, then by kind: {"patched": {...}, "stock": {...}}; every client kind that made
    a request is present, with {} when none of its requests failed."""
    clients = clients_of(records)
    return {str(c): error_kinds(records[(clients == c).to_numpy()]) for c in sorted(clients.unique())}


def ops_by_client(records: pd.DataFrame) -> dict[str, int]:
    """Requests by client kind."""
    return {str(c): int(n) for c, n in clients_of(records).value_counts().sort_index().items()}


def longest_gap(records: pd.DataFrame) -> tuple[float, float]:
    """(seconds, start time) of the longest stretch without a served request, from the first request to the last.

    A request is served when it completed without error; its time is its completion. The gap is never below the
    pacing interval of the probe (1/rate), so read it against that.
    """
    if records.empty:
        return float("nan"), float("nan")
    done = records["ts"].to_numpy(float) + records["latency_ms"].to_numpy(float) / 1000
    served = np.sort(done[records["outcome"].isin(SERVED).to_numpy()])
    points = np.concatenate(([records["ts"].min()], served, [done.max()]))
    gaps = np.diff(points)
    i = int(np.argmax(gaps))
    return float(gaps[i]), float(points[i])


def longest_gap_per_node(records: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Per master (the `node` a request was routed to): (seconds, start time) of the longest stretch without a
    served request on it, over the whole span of the records (first scheduled time to last completion, every node's
    requests included), so a master that stops serving at the start or the end counts too.

    A request is served when it completed without error, at its completion time. A gap is never below the pacing
    interval a master sees (about number of masters / rate). Records with no node (files from before the column, a
    slot the client had no owner for) are left out.
    """
    if records.empty or "node" not in records.columns:
        return {}
    done = records["ts"].to_numpy(float) + records["latency_ms"].to_numpy(float) / 1000
    start, end = float(records["ts"].min()), float(done.max())
    served = records["outcome"].isin(SERVED).to_numpy()
    nodes = _text(records, "node", "").to_numpy()
    out = {}
    for node in sorted(set(nodes) - {""}):
        points = np.concatenate(([start], np.sort(done[served & (nodes == node)]), [end]))
        gaps = np.diff(points)
        i = int(np.argmax(gaps))
        out[node] = (float(gaps[i]), float(points[i]))
    return out


def longest_unanswered_per_node(records: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Per master: (seconds, start) of the longest time it was asked and did not serve: from a request's actual send
    time (completion - service_ms) to the next served completion on that master (the end of the records if none).

    `longest_gap_per_node` counts time in which nobody asked a master too: a probe worker waits for each request in
    turn, so while one master stalls, every worker that reached it stops sending to the others as well, and their
    gaps grow with the stalled one's. This measure only counts time a master had a request outstanding, so it points
    at the master that stalled; read both (with many independent application clients, the others would have been
    asked, and answered).
    """
    if records.empty or "node" not in records.columns:
        return {}
    done = records["ts"].to_numpy(float) + records["latency_ms"].to_numpy(float) / 1000
    service = records["service_ms"].to_numpy(float) if "service_ms" in records.columns else np.full(len(done), np.nan)
    sent = done - np.where(np.isnan(service), records["latency_ms"].to_numpy(float), service) / 1000
    served = records["outcome"].isin(SERVED).to_numpy()
    nodes = _text(records, "node", "").to_numpy()
    end = float(done.max())
    out = {}
    for node in sorted(set(nodes) - {""}):
        mine = nodes == node
        ok_done = np.sort(done[mine & served])
        asked = sent[mine]
        if len(ok_done):
            nxt = np.searchsorted(ok_done, asked, side="left")
            answered = np.where(nxt < len(ok_done), ok_done[np.minimum(nxt, len(ok_done) - 1)], end)
        else:
            answered = np.full(len(asked), end)
        waits = answered - asked
        i = int(np.argmax(waits))
        out[node] = (float(waits[i]), float(asked[i]))
    return out


def per_batch(records: pd.DataFrame, windows: list[BatchWindow]) -> pd.DataFrame:
    """Latency, throughput, errors and lost values per batch, with a baseline row (before the first batch), the
    pauses between batches and the time after the last; `p99_vs_baseline_pct` compares each p99 with the baseline's."""
    ts = records["ts"]
    ordered = sorted(windows, key=lambda w: w[1])
    rows = []
    if ordered:
        first, last = ordered[0][1], max(end for _, _, end in ordered)
        inside = np.zeros(len(records), dtype=bool)
        for number, start, end in ordered:
            mask = ((ts >= start) & (ts < end)).to_numpy()
            inside |= mask
            rows.append({"window": f"batch {number}", "batch": number, "start": start, "end": end,
                         **latency_stats(records[mask], seconds=end - start)})
        before = records[ts < first]
        after = records[ts >= last]
        pauses = records[~inside & (ts >= first).to_numpy() & (ts < last).to_numpy()]
        pause_s = (last - first) - sum(end - start for _, start, end in ordered)
        rows.insert(0, _span_row("baseline", before, end=first))
        if len(pauses):
            rows.append({"window": "pauses", "batch": pd.NA, "start": first, "end": last,
                         **latency_stats(pauses, seconds=pause_s if pause_s > 0 else None)})
        rows.append(_span_row("after", after, start=last))
    else:
        rows.append(_span_row("baseline", records))
    out = pd.DataFrame(rows)
    out["batch"] = out["batch"].astype("Int64")
    out["seconds"] = out["end"] - out["start"]
    base = out.loc[out["window"] == "baseline", "p99_ms"].iloc[0]
    out["p99_vs_baseline_pct"] = (out["p99_ms"] / base - 1) * 100 if base and base == base else float("nan")
    return out


def _span_row(name: str, part: pd.DataFrame, start: float | None = None, end: float | None = None) -> dict:
    start = float(part["ts"].min()) if start is None and len(part) else start
    end = float((part["ts"] + part["latency_ms"] / 1000).max()) if end is None and len(part) else end
    seconds = end - start if start is not None and end is not None else None
    return {"window": name, "batch": pd.NA, "start": start if start is not None else float("nan"),
            "end": end if end is not None else float("nan"), **latency_stats(part, seconds=seconds)}


def per_window(records: pd.DataFrame, window_s: float = 1.0) -> pd.DataFrame:
    """The same statistics per fixed time window (windows without a single request included, with ops 0)."""
    columns = ["ts", *latency_stats(records.iloc[:0], seconds=window_s)]
    if records.empty:
        return pd.DataFrame(columns=columns)
    bucket = np.floor(records["ts"].to_numpy(float) / window_s).astype(np.int64)
    rows = {b: latency_stats(part, seconds=window_s) for b, part in records.groupby(bucket)}
    empty = latency_stats(records.iloc[:0], seconds=window_s)
    out = [{"ts": b * window_s, **rows.get(b, empty)} for b in range(int(bucket.min()), int(bucket.max()) + 1)]
    return pd.DataFrame(out, columns=columns)


def summarize(records: pd.DataFrame, acknowledged: int = 0, verified: int = 0, lost_writes: list[str] | None = None,
              wrong_writes: list[str] | None = None, killed: list[int] | None = None) -> ProbeSummary:
    """A ProbeSummary from the records and the read-back results (pure)."""
    stats = latency_stats(records)
    note = records["note"] if "note" in records.columns else pd.Series(dtype=str)
    gap, gap_at = longest_gap(records)
    lost_writes, wrong_writes = lost_writes or [], wrong_writes or []
    ended = float((records["ts"] + records["latency_ms"] / 1000).max()) if len(records) else float("nan")
    return ProbeSummary(
        started=float(records["ts"].min()) if len(records) else float("nan"), ended=ended,
        ops=stats["ops"], writes=int((records["op"] == "set").sum()), reads=int((records["op"] == "get").sum()),
        errors=stats["errors"], errors_by_kind=error_kinds(records),
        lost_reads=int((records["outcome"] == "lost").sum()), wrong_reads=int((records["outcome"] == "wrong").sum()),
        acknowledged_writes=acknowledged, verified_writes=verified, lost_writes=lost_writes, wrong_writes=wrong_writes,
        unverifiable_writes=acknowledged - verified - len(lost_writes) - len(wrong_writes),
        p50_ms=stats["p50_ms"], p99_ms=stats["p99_ms"], avg_ms=stats["avg_ms"], max_ms=stats["max_ms"],
        ops_per_s=stats["ops_per_s"], longest_gap_s=gap, longest_gap_at=gap_at,
        ask_unknown_node_handled=int((note == ASK_UNKNOWN_NODE).sum()), killed_workers=list(killed or []),
        p999_ms=stats["p999_ms"], ops_by_client=ops_by_client(records), errors_by_client=error_kinds_by_client(records),
        longest_gap_by_node={n: list(g) for n, g in longest_gap_per_node(records).items()},
        longest_unanswered_by_node={n: list(g) for n, g in longest_unanswered_per_node(records).items()})


def _worker_path(probe_dir: Path, index: int, token: str) -> Path:
    """`worker-<n>.csv`, appended to across probe sessions of one run folder; a file with another header (written by
    an older version) is left as it is and this session writes `worker-<n>-<token>.csv` instead."""
    path = probe_dir / f"worker-{index}.csv"
    if path.exists() and path.stat().st_size:
        with open(path, encoding="utf-8", newline="") as f:
            header = f.readline().strip()
        if header != ",".join(COLUMNS):
            return probe_dir / f"worker-{index}-{token}.csv"
    return path


def schedule(interval_s: float, stop: Callable[[], bool], clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep, nap_s: float = 0.1) -> Iterator[float]:
    """The probe's open-loop pacing: yields the scheduled send times start + k * interval_s (on `clock`), k = 0, 1, ...

    A time still ahead is slept towards (in naps of at most `nap_s`, looking at `stop` between them); a time already
    past is yielded at once, so after a stall the backlog goes out back to back: nothing is dropped, compressed or
    re-based. The caller times each request from the yielded time, not from when it sent it (no coordinated
    omission). Ends when `stop()` is true; never spins (it sleeps or the caller is busy with a request).
    """
    next_at = clock()
    while not stop():
        left = next_at - clock()
        if left > 0:
            sleep(min(left, nap_s))
            continue
        yield next_at
        next_at += interval_s


def _routed_node(client: RedisCluster, key: str) -> str:
    """host:port of the master the client's slot table routes the key to (no network); "" when it has none."""
    try:
        node = client.get_node_from_key(key)
    except Exception:
        return ""
    return node.name if node is not None else ""


def _run_worker(probe_dir: Path, index: int, state: dict, creds: Credentials) -> str:
    """One worker's loop: paced SETs of new keys and GETs of acknowledged ones, each recorded as a CSV line.

    Open-loop pacing without coordinated omission: request k is scheduled at start + k * interval (monotonic clock),
    whatever happened before; a request that starts late (the previous one stalled) goes out at once, and its
    latency counts from its scheduled time. Nothing is dropped or re-based, so after a stall the backlog is sent back
    to back until the worker is on schedule again. The loop never spins: it sleeps until the next scheduled time, or
    it is waiting on a request. It ends on the stop file, SIGTERM or the maximum run time.
    """
    s = state["settings"]
    kinds = state.get("clients") or [PATCHED] * s["processes"]
    kind = kinds[index]
    flag = detached.StopFlag(probe_dir / STOP_FILE, deadline=state["started"] + state["max_runtime_s"],
                             heartbeat=probe_dir.parent / detached.HEARTBEAT_FILE)
    if kind == STOCK:
        client = cluster_client(state["seeds"], creds, timeout=state["timeout_s"])
    else:
        client = ask_safe_client(state["seeds"], creds, timeout=state["timeout_s"])
    rng = random.Random(f"{state['token']}:{index}")
    interval = len(kinds) / s["rate"]
    readable_for = s["ttl_s"] - TTL_MARGIN_S
    prefix = f"{s['prefix']}{state['token']}:{index}:"
    acked: list[tuple[int, float]] = []
    oldest = 0
    worst_lag = 0.0
    path = _worker_path(probe_dir, index, state["token"])
    new_file = not path.exists() or not path.stat().st_size
    with open(path, "a", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        if new_file:
            out.writerow(COLUMNS)
            f.flush()
        (probe_dir / f"worker-{index}.ready").write_text(str(time.time()))
        seq, flushed = 0, time.monotonic()
        for scheduled in schedule(interval, flag.is_set):
            while oldest < len(acked) and acked[oldest][1] < time.time() - readable_for:
                oldest += 1
            reading = oldest < len(acked) and rng.random() < s["read_ratio"]
            n = acked[rng.randrange(oldest, len(acked))][0] if reading else seq
            key = f"{prefix}{n}"
            handled = getattr(client, "ask_unknown_targets", 0)
            node = _routed_node(client, key)
            sent = time.monotonic()
            lag = sent - scheduled
            worst_lag = max(worst_lag, lag)
            ts = time.time() - lag
            outcome, error = "ok", ""
            try:
                if reading:
                    value = client.get(key)
                    if value is None:
                        outcome, error = "lost", "acknowledged key missing"
                    elif value != str(n):
                        outcome, error = "wrong", f"value {value[:40]!r}, expected {n}"
                else:
                    if client.set(key, n, ex=s["ttl_s"]):
                        acked.append((n, ts))
                    else:
                        outcome, error = "response", "SET not acknowledged"
            except Exception as e:
                outcome, error = classify(e), f"{type(e).__name__}: {e}"[:200]
            done = time.monotonic()
            if not reading:
                seq += 1
            note = ASK_UNKNOWN_NODE if getattr(client, "ask_unknown_targets", 0) > handled else ""
            out.writerow([f"{ts:.6f}", index, "get" if reading else "set", key, f"{(done - scheduled) * 1000:.3f}",
                          outcome, error, note, f"{(done - sent) * 1000:.3f}", kind, node])
            if done - flushed > 0.2:
                f.flush()
                flushed = done
    client.close()
    return f"{flag.reason} ({kind} client; at most {worst_lag:.3f} s behind schedule)"


def _worker_main(argv: list[str]) -> int:
    """Entry point of a detached worker: `python -m runbook_lib.watch.traffic --dir <probe dir> --worker <n>`."""
    args = dict(zip(argv[::2], argv[1::2]))
    probe_dir, index = Path(args["--dir"]), int(args["--worker"])
    return detached.run_main(f"worker {index}", lambda payload: _run_worker(probe_dir, index, payload["state"],
                                                                            Credentials(**payload["credentials"])))


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
