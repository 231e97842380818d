"""The probe's records and their statistics (docs/design.md, Proof of zero downtime): the records as its workers write
them and as they are read back, and pure functions of them: latency per batch and per window, failures by kind and by
client, gaps cluster-wide and per master, and the summary a verified probe ends with.

Records (COLUMNS), one per request, appended by each worker to `probe/worker-<n>.csv` in the run folder:
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

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from runbook_lib.checks import Check
from runbook_lib.watch import detached
from runbook_lib.watch.probe_client import ASK_UNKNOWN_NODE, PATCHED, STOCK
from runbook_lib.watch.timeline import BatchWindow

COLUMNS = ["ts", "worker", "op", "key", "latency_ms", "outcome", "error", "note", "service_ms", "client", "node"]
SERVED = ("ok", "lost", "wrong")
DATA_ERRORS = ("lost", "wrong")


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



def empty_records() -> pd.DataFrame:
    """No records, with each column's dtype."""
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
        return empty_records()
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
