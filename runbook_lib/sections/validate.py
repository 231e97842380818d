"""Post-change validation and health checks: coverage, agreement, open slots, balance, keys, live round trips."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from runbook_lib.checks import Check
from runbook_lib.cluster.connection import CLIENT_NAME, cluster_client, node_client
from runbook_lib.cluster.lock import lock_keys
from runbook_lib.cluster.topology import SLOTS, Topology, misplaced_keys
from runbook_lib.config import Credentials, Params, replicas_pending
from runbook_lib.watch.acceptance import Acceptance, acceptance
from runbook_lib.watch.probe_stats import ProbeSummary
from runbook_lib.watch.watchers import finish_probe


def _check(name: str, ok: bool, detail: str) -> Check:
    return Check(name, "pass" if ok else "fail", detail)


def health(topo: Topology, pending_replicas: set[str] = frozenset()) -> list[Check]:
    """The cluster-wide health checks: reachability, state, coverage, agreement, open slots, replicas.

    Masters in `pending_replicas` may lack one: new masters allowed to take slots without a replica
    (migration.allow_master_without_replica; config.replicas_pending). Otherwise every new master has had its replica
    since 25_add_replicas, before its first slot.
    """
    checks = [_check("nodes reachable", not topo.unreachable,
                     "all %d nodes answered" % len(topo.views) if not topo.unreachable
                     else "unreachable: " + ", ".join(topo.unreachable))]
    failing = [e.address for e in topo.nodes.values() if not e.healthy]
    checks.append(_check("no failed nodes", not failing, "none flagged fail/handshake" if not failing
                         else "flagged: " + ", ".join(failing)))
    return checks + slot_map(topo, pending_replicas)


def slot_map(topo: Topology, pending_replicas: set[str] = frozenset()) -> list[Check]:
    """The slot map's health: every slot covered, the nodes agreeing, no open slot, a replica for every master with
    slots (masters in `pending_replicas` may lack one, see `health`)."""
    checks = []
    uncovered = topo.uncovered()
    checks.append(_check("all slots covered", not uncovered,
                         f"{SLOTS} of {SLOTS} slots have an owner" if not uncovered
                         else f"{len(uncovered)} slots have no owner (first: {uncovered[:5]})"))
    dis = topo.disagreements()
    checks.append(_check("nodes agree", not dis, f"{len(topo.views)} nodes share one slot map" if not dis
                         else "; ".join(dis[:3])))
    open_slots = topo.open_slots()
    checks.append(_check("no open slots", not open_slots, "no IMPORTING/MIGRATING slot" if not open_slots
                         else "; ".join(f"{o['node']} slot {o['slot']} {o['state']}" for o in open_slots[:5])))
    owned = topo.slots_by_master()
    orphans = [m.address for m in topo.masters() if owned.get(m.id) and not topo.replicas_of(m.id)]
    blocking = [a for a in orphans if a not in pending_replicas]
    detail = ("each master with slots has at least one replica" if not orphans
              else "no replica yet: " + ", ".join(orphans))
    checks.append(Check("every master has a replica", "fail" if blocking else ("warn" if orphans else "pass"), detail))
    return checks


def check_now(topo: Topology, params: Params) -> list[Check]:
    """`runbook check`: the cluster's health, and its balance as a warning (a cluster mid-change is not balanced)."""
    spread = balance(topo)
    spread.status = "pass" if spread.ok else "warn"
    return health(topo, pending_replicas=replicas_pending(params)) + [spread]


def stop_probe(params: Params, run_dir: Path) -> ProbeSummary | None:
    """Stop the run's traffic probe and read back every write it had acknowledged (None when no probe ran): first,
    so that what follows is checked on a cluster the probe no longer writes to."""
    return finish_probe(params, run_dir)


def cluster_checks(topo: Topology, creds: Credentials, baseline: dict | None, quiet: bool) -> list[Check]:
    """60_validate's checks of the cluster: health, balance, a live round trip, every key where it belongs, and the
    key count against the before-picture (a warning without one)."""
    checks = health(topo) + [balance(topo), round_trip(topo, creds), keys_where_they_belong(topo, creds)]
    if baseline:
        return checks + [key_count_change(topo, creds, baseline, quiet)]
    return checks + [Check("key count", "warn", "no baseline.json in this run folder (run 00_preflight first)")]


def slots_before_after(baseline: dict | None, topo: Topology) -> tuple[dict[str, int], dict[str, int]]:
    """Slots per master (by address) in the before-picture (empty without one) and now."""
    before = {m["address"]: m["slot_count"] for m in baseline["masters"]} if baseline else {}
    return before, {m["address"]: m["slot_count"] for m in topo.snapshot()["masters"]}


def client_acceptance(params: Params, run_dir: Path, probe: ProbeSummary | None) -> Acceptance:
    """The article's acceptance from the clients' side: latency variation while slots moved, failed requests, lost
    writes, downtime per master (`watch.acceptance`)."""
    return acceptance(run_dir, probe, params.model.gates)


def latency_windows(acceptance: Acceptance) -> pd.DataFrame:
    """The dashboard view of the verdict: p99 of every request per fixed 10 s window across the migration, as a
    multiple of the reference the verdict used, and how much of each window slots moved or were quiet."""
    latency = acceptance.data.get("latency", {})
    rows = latency.get("windows") or []
    reference = latency.get("reference_p99_ms")
    return pd.DataFrame([{"window (UTC)": w["start_utc"], "requests": w["n"],
                          "p99 ms": None if w["p99_ms"] is None else round(w["p99_ms"], 2),
                          f"x {latency.get('reference', 'reference')}": None if w["p99_ms"] is None or not reference
                          else round(w["p99_ms"] / reference, 2),
                          "moving s": w["moving_s"], "quiet s": w["quiet_s"]} for w in rows])


def balance(topo: Topology, tolerance_pct: float = 1.0) -> Check:
    """Each master within tolerance_pct of an even share of the slots."""
    counts = {m.address: len(s) for m, s in ((m, topo.slots_by_master().get(m.id, set())) for m in topo.masters())}
    even = SLOTS / len(counts)
    worst = max(abs(c - even) / even * 100 for c in counts.values())
    detail = ", ".join(f"{a}: {c}" for a, c in counts.items()) + f" (even share {even:.0f}, worst {worst:.2f} % off)"
    return _check("slots balanced", worst <= tolerance_pct, detail)


def key_count(topo: Topology, creds: Credentials) -> int:
    """Keys held by all masters (DBSIZE summed), leaving out the runbook's own run-lock key."""
    return sum(node_client(m.address, creds).dbsize() for m in topo.masters()) - lock_keys(topo, creds)


def keyspace_stats(topo: Topology, creds: Credentials) -> dict[str, int]:
    """Keys expired and evicted so far, summed over the masters (INFO stats): what explains a key count falling."""
    totals = {"expired_keys": 0, "evicted_keys": 0}
    for m in topo.masters():
        stats = node_client(m.address, creds).info("stats")
        for name in totals:
            totals[name] += int(stats.get(name, 0))
    return totals


def keys_where_they_belong(topo: Topology, creds: Credentials) -> Check:
    """No master holds keys of a slot it does not own: such keys are invisible to clients (stranded)."""
    misplaced = misplaced_keys(topo, creds)
    names = {e.id: e.address for e in topo.nodes.values()}
    detail = "; ".join(f"slot {s}: {n} keys on {names.get(node, node[:8])}" for s, held in sorted(misplaced.items())[:5]
                       for node, n in held.items())
    return _check("no key stranded", not misplaced,
                  f"every master holds keys only of its own slots ({SLOTS} slots checked on {len(topo.masters())} "
                  "masters)" if not misplaced else f"{len(misplaced)} slots have keys on a master that does not own "
                                                   f"them: {detail}; `runbook resume` moves them to their owner")


def key_count_change(topo: Topology, creds: Credentials, baseline: dict, quiet: bool) -> Check:
    """The key count against the before-picture, with what explains the change (expiry, eviction).

    On a live cluster writers and deletes change it too, so it only informs; with `quiet` (nothing but the runbook
    writes) a change that expiry and eviction do not explain fails.
    """
    now, before = key_count(topo, creds), baseline["keys"]
    stats, was = keyspace_stats(topo, creds), baseline.get("keyspace_stats", {})
    expired = stats["expired_keys"] - was.get("expired_keys", stats["expired_keys"])
    evicted = stats["evicted_keys"] - was.get("evicted_keys", stats["evicted_keys"])
    unexplained = now - before + expired + evicted
    detail = (f"{now} keys now, {before} before: {now - before:+d}, of which {expired} expired and {evicted} evicted "
              f"since the before-picture; {unexplained:+d} unexplained")
    if not quiet:
        return Check("key count", "pass", detail + " (a live cluster's writers and deletes; the checks above prove "
                                                   "that no key was lost; validation.quiet: true makes this strict)")
    return _check("key count", unexplained == 0, detail + (" (validation.quiet: true)" if unexplained == 0 else
                                                           ": nothing but the runbook should have written"))


def round_trip(topo: Topology, creds: Credentials, count: int = 16) -> Check:
    """Write test keys through a cluster client, read them back, and check CLUSTER KEYSLOT against their owner."""
    client = cluster_client([m.address for m in topo.masters()], creds, name=CLIENT_NAME)
    owners = topo.owners()
    address = {e.id: e.address for e in topo.nodes.values()}
    stamp = f"{time.time():.6f}"
    problems, served_by = [], set()
    try:
        for i in range(count):
            key = f"runbook:validate:{stamp}:{i}"
            client.set(key, stamp, ex=300)
            if client.get(key) != stamp:
                problems.append(f"{key} did not read back")
            slot = int(node_client(topo.seed, creds).execute_command("CLUSTER KEYSLOT", key))
            node = client.get_node_from_key(key)
            owner = address[owners[slot]]
            served_by.add(owner)
            if f"{node.host}:{node.port}" != owner:
                problems.append(f"{key} (slot {slot}) served by {node.host}:{node.port}, owner is {owner}")
            client.delete(key)
    finally:
        client.close()
    return _check("read/write round trip", not problems,
                  f"{count} keys written and read back on {len(served_by)} masters; KEYSLOT matches the owner"
                  if not problems else "; ".join(problems[:3]))


