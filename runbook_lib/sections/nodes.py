"""Adding new masters and replicas: checks that they are fresh, CLUSTER MEET, and waiting until the cluster agrees."""

from __future__ import annotations

import time

import redis

from runbook_lib.addresses import meet_address
from runbook_lib.checks import Check, StepReport
from runbook_lib.cluster.connection import node_client, ping
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.replicas import replica_checks
from runbook_lib.cluster.topology import NodeEntry, Topology, cluster_info, observe, read_view
from runbook_lib.config import Credentials, Params, new_master_addresses, replica_pairs
from runbook_lib.exceptions import BadInput, CheckFailed


def check_fresh(address: str, creds: Credentials) -> str:
    """Verify a node is reachable, in cluster mode, empty and alone; return its node id."""
    client = ping(address, creds)
    info = client.info("cluster")
    if not info.get("cluster_enabled"):
        raise BadInput(f"{address} is not in cluster mode; set `cluster-enabled yes` in its config and restart it")
    view = read_view(client, address)
    if len(view.entries) > 1:
        raise BadInput(f"{address} already knows {len(view.entries) - 1} other nodes; it must be a fresh node "
                       "(CLUSTER RESET HARD on it if it is really unused)")
    keys = client.dbsize()
    if keys:
        raise BadInput(f"{address} holds {keys} keys; a new node must be empty (FLUSHALL it if that data is not needed)")
    return view.myself.id


def _meet(seed: str, address: str, creds: Credentials) -> None:
    """CLUSTER MEET the node at `address` (a name, IPv4 or IPv6) by the IP it resolves to: Redis 7.0 takes no names."""
    client = node_client(seed, creds)
    try:
        ip, port = meet_address(address, like=read_view(client, seed).myself.ip)
    except ValueError as e:
        raise BadInput(f"cannot meet {address}: {e}") from None
    client.execute_command("CLUSTER MEET", ip, port)


def wait_known(seed: str, creds: Credentials, node_ids: list[str], timeout: float) -> Topology:
    """Wait until every node of the cluster lists each of `node_ids` (handshake done) and reports cluster_state:ok."""
    deadline = time.time() + timeout
    while True:
        topo = observe(seed, creds)
        missing = [f"{addr} does not know {nid[:8]}" for addr, view in topo.views.items() for nid in node_ids
                   if nid not in view.entries or "handshake" in view.entries[nid].flags]
        states = {addr: cluster_info(node_client(addr, creds)).get("cluster_state") for addr in topo.views}
        not_ok = [f"{a} cluster_state:{s}" for a, s in states.items() if s != "ok"]
        if not missing and not not_ok and not topo.unreachable:
            return topo
        if time.time() > deadline:
            raise CheckFailed(f"the cluster did not converge within {timeout:.0f}s: "
                              + "; ".join((missing + not_ok + list(topo.unreachable))[:5]))
        time.sleep(0.2)


def add_masters(seed: str, creds: Credentials, addresses: list[str], journal: Journal, apply: bool,
                timeout: float = 60.0) -> StepReport:
    """Meet each new master that is not yet a member and wait until every node knows it and the cluster is ok."""
    topo = observe(seed, creds)
    actions, notes, new_ids = [], [], []
    for address in addresses:
        entry = topo.by_address(address)
        if entry is not None:
            if not entry.is_master:
                raise BadInput(f"{topo.known_as(address)} is already in the cluster as a replica, not a master")
            notes.append(f"{topo.known_as(address)} is already a master of the cluster ({entry.id[:8]}); nothing to do")
            new_ids.append(entry.id)
            continue
        node_id = check_fresh(address, creds)
        new_ids.append(node_id)
        actions.append(f"CLUSTER MEET {address} (node {node_id[:8]}) via {seed}")
        if apply:
            journal.record("node_meet", address=address, node=node_id, role="master")
            _meet(seed, address, creds)
    if apply and new_ids:
        wait_known(seed, creds, new_ids, timeout)
    return StepReport(actions=actions, notes=notes)


def add_replicas(seed: str, creds: Credentials, pairs: list[tuple[str, str]], journal: Journal, apply: bool,
                 timeout: float = 60.0) -> StepReport:
    """Attach each (replica, master) pair: meet the replica, CLUSTER REPLICATE, wait for master_link_status:up.

    Every pair is checked before anything changes: a replica that already serves another master is refused (a
    BadInput naming that master), never re-pointed silently; one already attached to its master is left as it is."""
    topo = observe(seed, creds)
    actions, notes, waits, todo = [], [], [], []
    for replica, master in pairs:
        m, r = topo.by_address(master), topo.by_address(replica)
        if _failed_over(m, r, creds):
            notes.append(f"{master} failed over to its replica {replica}, which now serves that shard; {master} "
                         f"becomes {replica}'s replica")
            master, replica = replica, master
        m = topo.by_address(master)
        if m is None or not m.is_master:
            raise BadInput(f"{master} is not a master of the cluster; add it (20_add_masters) before its replica")
        r = topo.by_address(replica)
        if r is not None and r.master_id == m.id:
            notes.append(f"{topo.known_as(replica)} already replicates {topo.known_as(master)}; nothing to do")
            waits.append((replica, m.id))
            continue
        if r is not None and r.is_master and r.slots:
            raise BadInput(f"{topo.known_as(replica)} is a master owning {len(r.slots)} slots; it cannot become a replica")
        if r is not None and not r.is_master and r.master_id:
            serving = topo.nodes.get(r.master_id)
            raise BadInput(f"{topo.known_as(replica)} is already a replica of "
                           f"{serving.address if serving else 'a node'} ({r.master_id[:8]}); params name it the "
                           f"replica of {topo.known_as(master)}, and CLUSTER REPLICATE would take it from the master "
                           "it serves. Name a fresh node as the replica in params; nothing was changed")
        rid = r.id if r is not None else check_fresh(replica, creds)
        if r is None:
            actions.append(f"CLUSTER MEET {replica} (node {rid[:8]}) via {seed}")
        actions.append(f"CLUSTER REPLICATE {m.id[:8]} on {replica} (replica of {master})")
        todo.append((replica, rid, m.id, r is None))
        waits.append((replica, m.id))
    if apply:
        for replica, rid, master_id, meet in todo:
            if meet:
                journal.record("node_meet", address=replica, node=rid, role="replica")
                _meet(seed, replica, creds)
                wait_known(seed, creds, [rid], timeout)
            journal.record("replica_attach", address=replica, node=rid, master=master_id)
            node_client(replica, creds).execute_command("CLUSTER REPLICATE", master_id)
        for replica, master_id in waits:
            wait_replica_synced(seed, creds, replica, master_id, timeout)
    return StepReport(actions=actions, notes=notes)


def _failed_over(master: NodeEntry | None, replica: NodeEntry | None, creds: Credentials) -> bool:
    """Whether the shard params name as (master, replica) failed over: the replica is a master that was promoted
    (it carries on an earlier replication history) and the master replicates it or came back empty."""
    if master is None or replica is None or not replica.is_master or not replica.healthy:
        return False
    if master.master_id == replica.id:
        return True
    if not master.is_master or master.slots:
        return False
    try:
        history = node_client(replica.address, creds).info("replication").get("master_replid2", "")
    except (redis.RedisError, OSError):
        return False
    return bool(replica.slots) or history.strip("0") != ""


def wait_replica_synced(seed: str, creds: Credentials, replica: str, master_id: str, timeout: float) -> None:
    """Wait until the replica's link to its master is up and every node sees it as that master's replica."""
    deadline = time.time() + timeout
    while True:
        try:
            link = node_client(replica, creds).info("replication").get("master_link_status")
        except (redis.RedisError, OSError):
            link = None
        topo = observe(seed, creds)
        rid = read_view(node_client(replica, creds), replica).myself.id
        seen = all(rid in v.entries and v.entries[rid].master_id == master_id for v in topo.views.values())
        if link == "up" and seen:
            return
        if time.time() > deadline:
            raise CheckFailed(f"replica {replica} not in sync within {timeout:.0f}s "
                              f"(master_link_status:{link}, seen by all nodes: {seen})")
        time.sleep(0.2)


def verify_members(topo: Topology, addresses: list[str], role: str, masters: dict[str, str] | None = None) -> list[Check]:
    """Checks that each address is in the cluster with the expected role (and master, for replicas)."""
    checks = []
    for address in addresses:
        e = topo.by_address(address)
        if e is None:
            checks.append(Check(f"{role} {address}", "fail", "not in the cluster"))
        elif (role == "master") != e.is_master:
            checks.append(Check(f"{role} {address}", "fail", f"in the cluster as {'master' if e.is_master else 'replica'}"))
        elif masters and topo.nodes.get(e.master_id or "") is not None \
                and getattr(topo.by_address(masters[address]), "id", None) != e.master_id:
            checks.append(Check(f"{role} {address}", "fail", f"replicates {topo.nodes[e.master_id].address}, "
                                                               f"expected {topo.known_as(masters[address])}"))
        else:
            checks.append(Check(f"{role} {address}", "pass", f"member as {role} ({e.id[:8]}), seen by every node"))
    return checks


def add_new_masters(params: Params, journal: Journal, apply: bool) -> StepReport:
    """20_add_masters: the params' new masters joined as empty masters (`add_masters`)."""
    return add_masters(params.model.cluster.seed, params.credentials(), new_master_addresses(params), journal,
                       apply=apply, timeout=params.model.migration.convergence_timeout_s)


def add_new_replicas(params: Params, journal: Journal, apply: bool) -> StepReport:
    """25_add_replicas: each new master's replica attached and in sync (`add_replicas`)."""
    return add_replicas(params.model.cluster.seed, params.credentials(), replica_pairs(params), journal,
                        apply=apply, timeout=params.model.migration.convergence_timeout_s)


def verify_new_masters(topo: Topology, params: Params) -> list[Check]:
    """Each new master a member of the cluster as a master, seen by every node."""
    return verify_members(topo, new_master_addresses(params), "master")


def verify_new_replicas(topo: Topology, params: Params) -> list[Check]:
    """Each new replica a member replicating its master, and each new master's replica in sync."""
    pairs = replica_pairs(params)
    return verify_members(topo, [r for r, _ in pairs], "replica", dict(pairs)) + new_master_replicas(topo, params)


def new_master_replicas(topo: Topology, params: Params, missing: str = "fail") -> list[Check]:
    """One check per new master: its replica in sync; otherwise `missing`, or a warning where params allow a master
    without a replica (migration.allow_master_without_replica)."""
    return replica_checks(topo, params.credentials(), new_master_addresses(params),
                          allow=params.model.migration.allow_master_without_replica, missing=missing)
