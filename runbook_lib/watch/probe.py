"""The probe (docs/design.md, Proof of zero downtime): worker processes that write unique keys, read acknowledged ones
back and record every request's latency and outcome, so that a run can show its latency, its errors and that no
write was lost.

Workers are detached background processes (see `background`): a probe started in one notebook keeps running while
other cells and other notebooks run, and `TrafficProbe.attach(run_dir)` stops and verifies it from anywhere. Each
worker appends its records to `probe/worker-<n>.csv` in the run folder (`probe_stats` reads and summarises them)
and publishes the scheduled time of the request it has in flight in `probe/inflight.bin` (`inflight`), so that a
stall shows before its requests complete; `python -m runbook_lib.watch.probe --dir <probe dir> --worker <n>` runs one worker.
"""

from __future__ import annotations

import csv
import json
import math
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from pydantic import ValidationError
from redis.cluster import RedisCluster

from runbook_lib.cluster.connection import cluster_client
from runbook_lib.config import Credentials, Params, Probe
from runbook_lib.exceptions import BadInput
from runbook_lib.watch import detached
from runbook_lib.watch.background import BackgroundWorkers, stop_flag
from runbook_lib.watch.inflight import INFLIGHT_FILE, InFlight, in_flight, late_samples
from runbook_lib.watch.probe_client import ASK_UNKNOWN_NODE, PATCHED, STOCK, AskSafeCluster, ask_safe_client, classify
from runbook_lib.watch.probe_stats import COLUMNS, ProbeSummary, empty_records, read_records, summarize

PROBE_DIR = "probe"
STATE_FILE = "probe.json"
SUMMARY_FILE = "summary.json"
TTL_MARGIN_S = 60.0


def _settings(rate: float, processes: int, prefix: str, ttl_s: int, read_ratio: float,
              stock_processes: int = 1) -> Probe:
    try:
        return Probe(enabled=True, rate=float(rate), processes=processes, prefix=prefix, ttl_s=ttl_s,
                     read_ratio=float(read_ratio), stock_processes=stock_processes)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(map(str, err["loc"]))
        raise BadInput(f"traffic probe: {key}: {err['msg']} (got {err['input']!r})") from None


class TrafficProbe(BackgroundWorkers):
    """Probe traffic against a cluster from detached worker processes, recorded under `<run_dir>/probe/`.

    `processes` workers use the patched AskSafeCluster, `stock_processes` more use stock redis-py RedisCluster (as
    `connection.cluster_client` makes it for applications); workers 0..processes-1 are patched, the rest stock.
    `rate` is the total operations per second over all of them; keys are `<prefix><token>:<worker>:<seq>` (no
    hash tag, so they spread over all slots), written with SET ... EX ttl_s and value seq; `read_ratio` of the
    operations read a random acknowledged key back. A worker is ready once it is connected and sending; workers stop
    by themselves after `max_runtime_s`.
    """

    folder, state_file, module, title = PROBE_DIR, STATE_FILE, "runbook_lib.watch.probe", "traffic probe"

    def __init__(self, seeds: list[str], creds: Credentials | None, run_dir: str | Path, rate: float = 200.0,
                 processes: int = 2, prefix: str = "runbook:probe:", ttl_s: int = 3600, read_ratio: float = 0.5,
                 timeout_s: float = 2.0, max_runtime_s: float = 6 * 3600.0, stock_processes: int = 1) -> None:
        if not seeds:
            raise BadInput("traffic probe: give at least one seed address")
        super().__init__(run_dir, creds, max_runtime_s)
        self.seeds = list(seeds)
        self.settings = _settings(rate, processes, prefix, ttl_s, read_ratio, stock_processes)
        self.timeout_s = timeout_s

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
        state = cls.recorded(run_dir)
        s = state["settings"]
        return cls(state["seeds"], creds, run_dir, rate=s["rate"], processes=s["processes"], prefix=s["prefix"],
                   ttl_s=s["ttl_s"], read_ratio=s["read_ratio"], timeout_s=state["timeout_s"],
                   max_runtime_s=state["max_runtime_s"], stock_processes=s.get("stock_processes", 0))

    @property
    def clients(self) -> list[str]:
        """Each worker's client kind, by worker number: the patched ones first, then the stock ones."""
        return [PATCHED] * self.settings.processes + [STOCK] * self.settings.stock_processes

    def _workers(self) -> int:
        return len(self.clients)

    def _new_state(self) -> dict:
        return {"seeds": self.seeds, "settings": self.settings.model_dump(), "token": secrets.token_hex(3),
                "timeout_s": self.timeout_s, "clients": self.clients}

    def records(self, since: float | None = None) -> pd.DataFrame:
        """Every operation recorded so far (or since a time), oldest first; safe to call while workers write."""
        frames = [read_records(p, since) for p in sorted(self.dir.glob("worker-*.csv"))]
        frames = [f for f in frames if len(f)]
        if not frames:
            return empty_records()
        return pd.concat(frames, ignore_index=True).sort_values("ts", kind="stable").reset_index(drop=True)

    def outstanding(self, now: float, since: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ts, latency_ms) at `now` of the requests the workers owe and have not recorded (from `since` on): for a
        worker stuck since scheduled time t0, every send its schedule had due since, each as late as it already is,
        so a stall that blocks every worker shows while it lasts (`inflight.late_samples`)."""
        workers = len(self.clients)
        return late_samples(in_flight(self.dir / INFLIGHT_FILE, workers), workers / self.settings.rate, now,
                            -math.inf if since is None else since)

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
    flag = stop_flag(probe_dir, state)
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
    board = InFlight(probe_dir / INFLIGHT_FILE, index, len(kinds))
    try:
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
                board.sending(ts)
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
                board.done()
                if not reading:
                    seq += 1
                note = ASK_UNKNOWN_NODE if getattr(client, "ask_unknown_targets", 0) > handled else ""
                out.writerow([f"{ts:.6f}", index, "get" if reading else "set", key, f"{(done - scheduled) * 1000:.3f}",
                              outcome, error, note, f"{(done - sent) * 1000:.3f}", kind, node])
                if done - flushed > 0.2:
                    f.flush()
                    flushed = done
    finally:
        board.close()
    client.close()
    return f"{flag.reason} ({kind} client; at most {worst_lag:.3f} s behind schedule)"


def _worker_main(argv: list[str]) -> int:
    """Entry point of a detached worker: `python -m runbook_lib.watch.probe --dir <probe dir> --worker <n>`."""
    args = dict(zip(argv[::2], argv[1::2]))
    probe_dir, index = Path(args["--dir"]), int(args["--worker"])
    return detached.run_main(f"worker {index}", lambda payload: _run_worker(probe_dir, index, payload["state"],
                                                                            Credentials(**payload["credentials"])))


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))