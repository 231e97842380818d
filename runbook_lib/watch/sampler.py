"""The sampler (docs/design.md, The pace): every node's metrics sampled through the whole run (up, CPU,
memory, ops/s, replication offsets and lag), by a detached background process, and the INFO arithmetic behind them.

The sampler (see `background`) polls every node's INFO each interval and appends tidy rows (ts, node, role, metric,
value) to `metrics/samples.csv` in the run folder, which `read_samples` reads back; `gates` judges them and
`metrics_table` joins them with the probe's latency. `python -m runbook_lib.watch.sampler --dir <metrics dir>` runs it.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

import pandas as pd
import redis

from runbook_lib.addresses import same_address, same_node
from runbook_lib.cluster.connection import NodeClients
from runbook_lib.cluster.topology import read_view
from runbook_lib.config import Credentials
from runbook_lib.exceptions import BadInput
from runbook_lib.watch import detached
from runbook_lib.watch.background import BackgroundWorkers, stop_flag

METRICS_DIR = "metrics"
SAMPLES_FILE = "samples.csv"
STATE_FILE = "sampler.json"
READY_FILE = "ready"
COLUMNS = ["ts", "node", "role", "metric", "value"]


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


class Sampler(BackgroundWorkers):
    """The detached sampler of a run folder: polls every node each `interval_s` into `<run_dir>/metrics/samples.csv`.

    `extra` names nodes to sample before they join (the new masters and replicas). It is ready after its second round
    (CPU and ops/s need two). Stops by itself after `max_runtime_s`; `Sampler.attach(run_dir).stop()` stops it from
    any process.
    """

    folder, state_file, module, title = METRICS_DIR, STATE_FILE, "runbook_lib.watch.sampler", "sampler"

    def __init__(self, seed: str, creds: Credentials | None, run_dir: str | Path, interval_s: float = 1.0,
                 extra: list[str] | tuple = (), max_runtime_s: float = 12 * 3600.0) -> None:
        if interval_s <= 0:
            raise BadInput(f"sampler interval must be positive (got {interval_s})")
        super().__init__(run_dir, creds, max_runtime_s)
        self.seed = seed
        self.interval_s = interval_s
        self.extra = list(extra)

    @classmethod
    def attach(cls, run_dir: str | Path) -> "Sampler":
        """The sampler recorded in a run folder (started by this or another process)."""
        state = cls.recorded(run_dir)
        return cls(state["seed"], None, run_dir, interval_s=state["interval_s"], extra=state["extra"],
                   max_runtime_s=state["max_runtime_s"])

    def _new_state(self) -> dict:
        return {"seed": self.seed, "extra": self.extra, "interval_s": self.interval_s}

    def _worker_args(self, worker: int) -> list[str]:
        return []

    def _worker_name(self, worker: int) -> str:
        return "the metrics sampler"

    def _files(self, worker: int) -> tuple[Path, Path]:
        return self.dir / "sampler.log", self.dir / READY_FILE


def _run_sampler(metrics_dir: Path, state: dict, creds: Credentials) -> str:
    """The sampler's loop: a round over every node each interval, appended to samples.csv; ready after two rounds."""
    flag = stop_flag(metrics_dir, state)
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
                (metrics_dir / READY_FILE).touch()
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


def _sampler_main(argv: list[str]) -> int:
    """Entry point of the detached sampler: `python -m runbook_lib.watch.sampler --dir <metrics dir>`."""
    metrics_dir = Path(dict(zip(argv[::2], argv[1::2]))["--dir"])
    return detached.run_main("sampler", lambda payload: _run_sampler(metrics_dir, payload["state"],
                                                                     Credentials(**payload["credentials"])))


if __name__ == "__main__":
    sys.exit(_sampler_main(sys.argv[1:]))
