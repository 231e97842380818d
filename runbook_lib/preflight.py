"""Preflight: connectivity and auth, version and config parity, fresh new nodes, headroom, cluster health, baseline."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from .config import Credentials, Params, new_master_addresses, replica_pairs
from .connection import node_client
from .exceptions import BadInput
from .nodes import check_fresh
from .topology import Topology
from .validate import Check, health, key_count

PARITY_SETTINGS = ("cluster-node-timeout", "maxmemory", "maxmemory-policy", "appendonly", "save",
                   "cluster-require-full-coverage", "cluster-allow-replica-migration", "repl-backlog-size",
                   "client-output-buffer-limit", "cluster-migration-barrier")


@dataclass
class NodeFacts:
    """What preflight learned of one node."""

    address: str
    role: str
    version: str
    engine: str
    config: dict[str, str]
    used_memory: int
    maxmemory: int
    connected_clients: int
    maxclients: int


def new_node_addresses(params: Params) -> list[str]:
    """Every node the expansion adds: new masters and their replicas."""
    return new_master_addresses(params) + [r for r, _ in replica_pairs(params)]


def atomic_slot_migration(engine: str, version: str) -> bool:
    """Whether the engine moves slots inside the server (Redis >= 8.4, Valkey >= 9.0)."""
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return (engine == "valkey" and parts >= (9, 0)) or (engine == "redis" and parts >= (8, 4))


def node_facts(address: str, role: str, creds: Credentials) -> NodeFacts:
    """INFO and CONFIG GET of the settings that must match, from one node."""
    client = node_client(address, creds, timeout=5.0)
    info = client.info()
    config = {}
    for name in PARITY_SETTINGS:
        reply = client.config_get(name)
        config[name] = str(reply.get(name, "")) if reply else ""
    maxclients = int(client.config_get("maxclients").get("maxclients", 0))
    engine = "valkey" if "valkey_version" in info else "redis"
    version = str(info.get("valkey_version", info.get("redis_version", "?")))
    return NodeFacts(address=address, role=role, version=version, engine=engine, config=config,
                     used_memory=int(info.get("used_memory", 0)), maxmemory=int(info.get("maxmemory", 0)),
                     connected_clients=int(info.get("connected_clients", 0)), maxclients=maxclients)


def gather(topo: Topology, params: Params, creds: Credentials) -> tuple[list[NodeFacts], list[Check]]:
    """Reach every node (cluster members and new nodes); unreachable or refusing nodes become failed checks."""
    roles = {e.address: ("master" if e.is_master else "replica") for e in topo.nodes.values()}
    for addr in new_node_addresses(params):
        roles.setdefault(addr, "new")
    facts, checks = [], []
    for address, role in roles.items():
        try:
            facts.append(node_facts(address, role, creds))
        except redis.AuthenticationError as e:
            checks.append(Check(f"auth {address}", "fail", f"authentication failed: {e}"))
        except (redis.RedisError, OSError) as e:
            checks.append(Check(f"reach {address}", "fail", f"cannot reach: {e}"))
    if not checks:
        checks.append(Check("connectivity and auth", "pass", f"all {len(facts)} nodes answered PING, INFO and CONFIG GET"))
    return facts, checks


def version_parity(facts: list[NodeFacts]) -> Check:
    versions = sorted({f"{f.engine} {f.version}" for f in facts})
    atomic = any(atomic_slot_migration(f.engine, f.version) for f in facts)
    note = "; engine offers atomic slot migration" if atomic else "; legacy MIGRATE protocol"
    return Check("version parity", "pass" if len(versions) == 1 else "fail",
                 ("all nodes run " + versions[0] if len(versions) == 1 else "mixed versions: " + ", ".join(versions))
                 + note)


def config_differences(facts: list[NodeFacts]) -> dict[str, dict[str, str]]:
    """Settings whose value is not the same on every node: setting → {address: value}."""
    diffs = {}
    for name in PARITY_SETTINGS:
        values = {f.address: f.config.get(name, "") for f in facts}
        if len(set(values.values())) > 1:
            diffs[name] = values
    return diffs


def config_parity(facts: list[NodeFacts]) -> Check:
    diffs = config_differences(facts)
    return Check("config parity", "pass" if not diffs else "fail",
                 f"{len(PARITY_SETTINGS)} settings equal on every node" if not diffs
                 else "differ: " + ", ".join(diffs))


def config_table(facts: list[NodeFacts]) -> list[dict]:
    """One row per node, one column per parity setting, for a highlighted table."""
    return [{"node": f.address, "role": f.role, "version": f.version, **f.config} for f in facts]


def headroom(facts: list[NodeFacts], memory_pct: float) -> list[Check]:
    """Memory against maxmemory and clients against maxclients, per node."""
    checks = []
    for f in facts:
        if f.maxmemory:
            pct = f.used_memory / f.maxmemory * 100
            checks.append(Check(f"memory {f.address}", "pass" if pct < memory_pct else "fail",
                                f"{pct:.1f} % of maxmemory used (gate {memory_pct:.0f} %)"))
        else:
            checks.append(Check(f"memory {f.address}", "warn", "maxmemory is 0 (unlimited): headroom unknown"))
        if f.maxclients and f.connected_clients / f.maxclients > 0.8:
            checks.append(Check(f"clients {f.address}", "fail",
                                f"{f.connected_clients} of {f.maxclients} client slots in use"))
    return checks


def new_nodes_fresh(topo: Topology, params: Params, creds: Credentials) -> list[Check]:
    """Each new node is in cluster mode, empty and alone, or already a member from an earlier run."""
    checks = []
    for addr in new_node_addresses(params):
        if topo.by_address(addr) is not None:
            checks.append(Check(f"new node {addr}", "pass", "already a member of this cluster (earlier run)"))
            continue
        try:
            check_fresh(addr, creds)
            checks.append(Check(f"new node {addr}", "pass", "cluster mode, empty, knows no other node"))
        except BadInput as e:
            checks.append(Check(f"new node {addr}", "fail", str(e)))
    return checks


def baseline(topo: Topology, creds: Credentials, new_addresses: list[str]) -> dict:
    """The before-picture later steps compare with: snapshot, key count, and whether no new node had joined yet."""
    joined = [a for a in new_addresses if topo.by_address(a) is not None]
    return {**topo.snapshot(), "keys": key_count(topo, creds), "pre_expansion": not joined, "joined": joined}


def config_styler(facts: list[NodeFacts]):
    """The parity table with every setting that differs between nodes highlighted."""
    import pandas as pd
    frame = pd.DataFrame(config_table(facts))
    differing = [c for c in frame.columns if c not in ("node", "role") and frame[c].nunique() > 1]
    return frame.style.map(lambda _: "background-color:#fbe0de;font-weight:bold", subset=differing).hide(axis="index")


def run_checks(topo: Topology, params: Params, creds: Credentials) -> tuple[list[NodeFacts], list[Check]]:
    """Every preflight check in order; fails stop the run before anything changes."""
    facts, checks = gather(topo, params, creds)
    if facts:
        checks += [version_parity(facts), config_parity(facts)]
        checks += headroom(facts, params.model.gates.memory_pct)
    checks += new_nodes_fresh(topo, params, creds)
    checks += health(topo, pending_replicas=set(new_master_addresses(params)))
    return facts, checks
