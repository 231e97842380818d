"""Which node to read a shard from: an in-sync replica, so that long reads (the big-key scan) spare the master that
serves the clients; the master only when the shard has no replica in sync, with the reason."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.topology import NodeEntry, Topology
from runbook_lib.config import Credentials

MAX_LAG_S = 10.0
"""Default for how stale a replica may be (seconds since its last ACK, as its master reports it) and still be read."""


@dataclass(frozen=True)
class ReadSource:
    """The node chosen to read one shard from, its role ("replica" or "master") and why it was chosen."""

    shard_master: str
    node: str
    role: str
    reason: str


def _listed(master_replication: dict, replica: NodeEntry) -> dict | None:
    """The master's INFO replication entry (`slaveN`: ip, port, state, offset, lag) for this replica, if any."""
    for name, entry in master_replication.items():
        if name.startswith("slave") and isinstance(entry, dict) and int(entry.get("port", -1)) == replica.port \
                and str(entry.get("ip")) in {replica.ip, replica.hostname, replica.address.rsplit(":", 1)[0]}:
            return entry
    return None


def sync_problem(replica: NodeEntry, own_replication: dict | None, master_replication: dict,
                 max_lag_s: float) -> str:
    """Why this replica is not in sync with its master ("" when it is): it must answer, report master_link_status:up
    and no sync in progress, and its master must list it online with a lag of at most `max_lag_s` seconds (pure)."""
    if own_replication is None:
        return "does not answer"
    if own_replication.get("master_link_status") != "up":
        return f"master_link_status:{own_replication.get('master_link_status', 'unknown')}"
    if int(own_replication.get("master_sync_in_progress", 0) or 0):
        return "a full sync is in progress"
    listed = _listed(master_replication, replica)
    if listed is None:
        return "its master does not list it"
    if listed.get("state") != "online":
        return f"its master lists it as {listed.get('state')}"
    if float(listed.get("lag", 0)) > max_lag_s:
        return f"lag {listed.get('lag')} s, over {max_lag_s:g} s"
    return ""


def choose(master: NodeEntry, replicas: list[NodeEntry], replications: dict[str, dict | None],
           master_replication: dict, max_lag_s: float) -> ReadSource:
    """The first in-sync replica of the shard (by address), else the master with why no replica qualified (pure).

    `replications` maps each replica's address to its own INFO replication (None when it did not answer)."""
    problems = []
    for replica in replicas:
        problem = ("flagged failing" if not replica.healthy
                   else sync_problem(replica, replications.get(replica.address), master_replication, max_lag_s))
        if not problem:
            lag = _listed(master_replication, replica) or {}
            return ReadSource(master.address, replica.address, "replica",
                              f"in sync (master_link_status:up, lag {lag.get('lag', '?')} s)")
        problems.append(f"{replica.address}: {problem}")
    reason = ("no replica in sync (" + "; ".join(problems) + ")") if problems else "the shard has no replica"
    return ReadSource(master.address, master.address, "master", reason)


def _replication(address: str, creds: Credentials) -> dict | None:
    try:
        with node_client(address, creds, timeout=5.0) as client:
            return client.info("replication")
    except (redis.RedisError, OSError):
        return None


def read_source(topo: Topology, master: NodeEntry, creds: Credentials, max_lag_s: float = MAX_LAG_S) -> ReadSource:
    """Where to read this master's shard from now: asks the master and each replica for INFO replication."""
    master_replication = _replication(master.address, creds) or {}
    replicas = [r for r in topo.replicas_of(master.id) if r.address not in topo.unreachable]
    replications = {r.address: _replication(r.address, creds) for r in replicas if r.healthy}
    return choose(master, replicas, replications, master_replication, max_lag_s)
