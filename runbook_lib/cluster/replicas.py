"""A second copy first: a target master receives slots only while a replica of it is in sync.

MIGRATE deletes the source copy as soon as the target replies, before the target's replica has the key
(docs/design.md, A second copy first): a target without an in-sync replica holds the only copy of everything moved to
it. `25_add_replicas` attaches each new master's replica while the master is still empty; the mover asks
`require_replicas` before it moves a slot.
"""

from __future__ import annotations

from typing import Callable

import redis

from runbook_lib.checks import Check
from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.topology import NodeEntry, Topology
from runbook_lib.config import Credentials
from runbook_lib.exceptions import CheckFailed

LinkStatus = Callable[[str], "str | None"]
"""A replica's address -> its INFO replication master_link_status ("up", "down"), None when it does not answer."""

WAY_OUT = ("run 25_add_replicas (with each new master's `replica` in params), or set "
           "migration.allow_master_without_replica: true to accept keys in one copy until a replica syncs")


def live_link_status(creds: Credentials, timeout: float = 5.0) -> LinkStatus:
    """A LinkStatus that asks each replica itself (INFO replication)."""
    def status(address: str) -> str | None:
        client = node_client(address, creds, timeout=timeout)
        try:
            return client.info("replication").get("master_link_status")
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()
    return status


def _target(topo: Topology, target: str) -> NodeEntry | None:
    """A target given by node id or by address."""
    return topo.nodes.get(target) or topo.by_address(target)


def replica_state(topo: Topology, target: str, link_status: LinkStatus) -> tuple[str, str, str | None]:
    """(target address, in-sync replica address or "", why there is none or None) for one target id or address."""
    entry = _target(topo, target)
    if entry is None:
        return target, "", "not in the cluster yet (20_add_masters)"
    if not entry.is_master:
        return entry.address, "", "not a master"
    replicas = [r for r in topo.replicas_of(entry.id) if r.healthy]
    if not replicas:
        return entry.address, "", "no replica attached"
    states = {r.address: link_status(r.address) for r in replicas}
    synced = [a for a, s in states.items() if s == "up"]
    if synced:
        return entry.address, synced[0], None
    return entry.address, "", "replica " + ", ".join(f"{a} master_link_status:{s or 'no answer'}"
                                                    for a, s in states.items())


def _states(topo: Topology, target_ids: list[str], link_status: LinkStatus) -> list[tuple[str, str, str | None]]:
    return [replica_state(topo, t, link_status) for t in dict.fromkeys(target_ids)]


def unreplicated_targets(topo: Topology, target_ids: list[str], link_status: LinkStatus) -> list[str]:
    """Addresses of the target masters (ids or addresses, in the order given) without a replica in sync.

    A replica counts when the topology lists it as the target's replica, it is not flagged failing, and it reports
    master_link_status:up itself (`link_status`: `live_link_status(creds)` asks the nodes, a test passes a dict's get).
    """
    return [address for address, _, why in _states(topo, target_ids, link_status) if why is not None]


def _checks(states: list[tuple[str, str, str | None]], allow: bool, missing: str) -> list[Check]:
    checks = []
    for address, replica, why in states:
        name = f"replica of {address} in sync"
        if why is None:
            checks.append(Check(name, "pass", f"{replica} master_link_status:up: every key moved to {address} "
                                              "has a second copy within replication lag"))
        elif allow:
            checks.append(Check(name, "warn", f"{why}; migration.allow_master_without_replica: true, so keys moved "
                                              f"to {address} have one copy until a replica syncs"))
        else:
            checks.append(Check(name, missing, f"{why}; no slot may move to {address} until a replica is in sync: "
                                               + WAY_OUT))
    return checks


def replica_checks(topo: Topology, creds: Credentials, target_ids: list[str], allow: bool,
                   missing: str = "fail", link_status: LinkStatus | None = None) -> list[Check]:
    """One check per target: pass with its in-sync replica; otherwise `missing` ("fail" or "warn"), or "warn" when
    `allow` (migration.allow_master_without_replica). Raises nothing: for sections that show what the mover will do."""
    return _checks(_states(topo, target_ids, link_status or live_link_status(creds)), allow, missing)


def require_replicas(topo: Topology, creds: Credentials, target_ids: list[str], allow: bool,
                     link_status: LinkStatus | None = None) -> list[Check]:
    """Refuse to move slots to targets without an in-sync replica: CheckFailed naming each one and the way out.

    With `allow` (migration.allow_master_without_replica) it returns a "warn" check per such target instead; targets
    with an in-sync replica get a "pass" check. Call it before the first slot moves to any of `target_ids`.
    """
    states = _states(topo, target_ids, link_status or live_link_status(creds))
    missing = [f"{address}: {why}" for address, _, why in states if why is not None]
    if missing and not allow:
        raise CheckFailed("no slot moves to a master without a replica in sync (MIGRATE deletes the source copy "
                          "before the target's replica has the key, so the target would hold the only copy): "
                          + "; ".join(missing) + ". " + WAY_OUT[0].upper() + WAY_OUT[1:])
    return _checks(states, allow, "fail")
