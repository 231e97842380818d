"""Preflight: connectivity and auth, data and bus ports, version and config parity, fresh new nodes, headroom (memory,
host RAM, CPU, clients), kernel settings, big keys, cluster health, baseline."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import redis

from runbook_lib.checks import Check
from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.topology import Topology, cluster_info, read_view
from runbook_lib.config import (
    BigKeys,
    Credentials,
    Params,
    new_master_addresses,
    new_node_addresses,
    parse_address,
    replica_pairs,
    replicas_pending,
)
from runbook_lib.exceptions import BadInput, CheckFailed
from runbook_lib.sections import bigkeys, host
from runbook_lib.sections.nodes import check_fresh
from runbook_lib.sections.validate import health, key_count, keyspace_stats
from runbook_lib.watch.sampler import cpu_pct

PARITY_SETTINGS = ("cluster-node-timeout", "maxmemory", "maxmemory-policy", "appendonly", "save",
                   "cluster-require-full-coverage", "cluster-allow-replica-migration", "repl-backlog-size",
                   "client-output-buffer-limit", "cluster-migration-barrier")
BUS_PORT_OFFSET = 10000
CLIENTS_PCT = 80.0
SWAPPINESS_MAX = 10
MB = 1024 * 1024


@dataclass
class NodeFacts:
    """What preflight learned of one node; `role` is the role a new node will take, `cpu_pct` is filled by sampling."""

    address: str
    role: str
    version: str
    engine: str
    config: dict[str, str]
    used_memory: int
    maxmemory: int
    connected_clients: int
    maxclients: int
    new: bool = False
    total_system_memory: int = 0
    cluster_state: str = ""
    bus_port: int = 0
    cpu_pct: float | None = None


@dataclass
class Findings:
    """Everything preflight checked: per-node facts, the TCP probes of data and bus ports, and the verdicts."""

    facts: list[NodeFacts]
    ports: list[dict]
    checks: list[Check]


def atomic_slot_migration(engine: str, version: str) -> bool:
    """Whether the engine moves slots inside the server (Redis >= 8.4, Valkey >= 9.0)."""
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return (engine == "valkey" and parts >= (9, 0)) or (engine == "redis" and parts >= (8, 4))


def node_facts(address: str, role: str, creds: Credentials, new: bool = False) -> NodeFacts:
    """INFO, CONFIG GET of the settings that must match, CLUSTER INFO and the node's own CLUSTER NODES line."""
    client = node_client(address, creds, timeout=5.0)
    try:
        info = client.info()
        config = {}
        for name in PARITY_SETTINGS:
            reply = client.config_get(name)
            config[name] = _text(reply.get(name, "")) if reply else ""
        maxclients = int(client.config_get("maxclients").get("maxclients", 0))
        try:
            state = cluster_info(client).get("cluster_state", "?")
            bus_port = read_view(client, address).myself.bus_port
        except redis.ResponseError:
            state, bus_port = "cluster mode off", 0
    finally:
        client.close()
    engine = "valkey" if "valkey_version" in info else "redis"
    version = str(info.get("valkey_version", info.get("redis_version", "?")))
    return NodeFacts(address=address, role=role, version=version, engine=engine, config=config,
                     used_memory=int(info.get("used_memory", 0)), maxmemory=int(info.get("maxmemory", 0)),
                     connected_clients=int(info.get("connected_clients", 0)), maxclients=maxclients, new=new,
                     total_system_memory=int(info.get("total_system_memory", 0)), cluster_state=state,
                     bus_port=bus_port)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def node_roles(topo: Topology, params: Params) -> dict[str, tuple[str, bool]]:
    """Every node preflight looks at, cluster members first: address → (role, added by this expansion)."""
    added = {e.id for e in map(topo.by_address, new_node_addresses(params)) if e is not None}
    members = sorted(topo.nodes.values(), key=lambda e: (not e.is_master, e.address))
    roles = {e.address: ("master" if e.is_master else "replica", e.id in added) for e in members}
    for addr in new_master_addresses(params):
        if topo.by_address(addr) is None:
            roles.setdefault(addr, ("master", True))
    for addr, _ in replica_pairs(params):
        if topo.by_address(addr) is None:
            roles.setdefault(addr, ("replica", True))
    return roles


def gather(topo: Topology, params: Params, creds: Credentials) -> tuple[list[NodeFacts], list[Check]]:
    """Reach every node (cluster members and new nodes); unreachable or refusing nodes become failed checks."""
    facts, checks = [], []
    for address, (role, new) in node_roles(topo, params).items():
        try:
            facts.append(node_facts(address, role, creds, new))
        except redis.AuthenticationError as e:
            checks.append(Check(f"auth {address}", "fail", f"authentication failed: {e}; check the password source "
                                "and username in params"))
        except redis.ResponseError as e:
            checks.append(Check(f"commands {address}", "fail", f"answered but refused a command: {e}; the user "
                                "needs INFO, CONFIG GET and CLUSTER INFO/NODES (ACL)"))
        except (redis.RedisError, OSError) as e:
            checks.append(Check(f"reach {address}", "fail", f"cannot reach: {e}"))
    if not checks:
        checks.append(Check("connectivity and auth", "pass", f"all {len(facts)} nodes answered INFO, CONFIG GET and "
                            "CLUSTER INFO with these credentials"))
    return facts, checks


def _odd_ones(values: dict[str, str]) -> tuple[str, list[str]]:
    """The value most nodes have, and the nodes that have another."""
    common = Counter(values.values()).most_common(1)[0][0]
    return common, [a for a, v in values.items() if v != common]


def version_parity(facts: list[NodeFacts]) -> Check:
    """One engine and version everywhere, and whether that engine moves slots atomically."""
    values = {f.address: f"{f.engine} {f.version}" for f in facts}
    atomic = any(atomic_slot_migration(f.engine, f.version) for f in facts)
    note = "; engine offers atomic slot migration" if atomic else "; legacy MIGRATE protocol"
    common, odd = _odd_ones(values)
    if not odd:
        return Check("version parity", "pass", f"all {len(facts)} nodes run {common}{note}")
    return Check("version parity", "fail", ", ".join(f"{a} runs {values[a]}" for a in odd)
                 + f" where {len(facts) - len(odd)} nodes run {common}{note}; run the same version everywhere")


def config_differences(facts: list[NodeFacts]) -> dict[str, dict[str, str]]:
    """Settings whose value is not the same on every node: setting → {address: value}."""
    diffs = {}
    for name in PARITY_SETTINGS:
        values = {f.address: f.config.get(name, "") for f in facts}
        if len(set(values.values())) > 1:
            diffs[name] = values
    return diffs


def config_parity(facts: list[NodeFacts]) -> Check:
    """The settings that matter are equal on every node (new ones included), naming each node that differs."""
    diffs = config_differences(facts)
    if not diffs:
        return Check("config parity", "pass", f"{len(PARITY_SETTINGS)} settings equal on all {len(facts)} nodes")
    parts = []
    for name, values in diffs.items():
        common, odd = _odd_ones(values)
        parts.append(f"{name}: " + ", ".join(f"{a} has {values[a]!r}" for a in odd)
                     + f" where {len(values) - len(odd)} nodes have {common!r}")
    return Check("config parity", "fail", "; ".join(parts) + ". Make them equal (CONFIG SET on the odd nodes, and "
                 "in their config files) and run preflight again")


def config_table(facts: list[NodeFacts]) -> list[dict]:
    """One row per node, one column per parity setting, for a highlighted table."""
    return [{"node": f.address, "role": f.role, "new": f.new, "version": f.version, **f.config} for f in facts]


def config_styler(facts: list[NodeFacts]):
    """The parity table: columns that differ between nodes shaded, the cells that differ from most nodes in bold red."""
    frame = pd.DataFrame(config_table(facts))
    differing = [c for c in frame.columns if c not in ("node", "role", "new") and frame[c].nunique() > 1]

    def mark(column):
        common = column.mode().iloc[0]
        return ["background-color:#fbe0de;font-weight:bold;color:#a30000" if v != common
                else "background-color:#fff4d6" for v in column]
    return frame.style.apply(mark, subset=differing).hide(axis="index")


def bus_port_of(address: str, topo: Topology, facts: dict[str, NodeFacts]) -> tuple[int, str]:
    """The cluster bus port of a node and where it comes from: CLUSTER NODES for members, the node's own
    CLUSTER NODES line for nodes not joined yet, else the data port + 10000."""
    entry = topo.by_address(address)
    if entry is not None and entry.bus_port:
        return entry.bus_port, "CLUSTER NODES"
    fact = facts.get(address)
    if fact is not None and fact.bus_port:
        return fact.bus_port, "its own CLUSTER NODES"
    return parse_address(address)[1] + BUS_PORT_OFFSET, "data port + 10000"


def port_probes(addresses: list[str], topo: Topology, facts: list[NodeFacts], timeout: float = 2.0) -> list[dict]:
    """TCP connect from this host to every node's data port and cluster bus port: "open", or why not."""
    by_address = {f.address: f for f in facts}
    targets = [(address, *parse_address(address), *bus_port_of(address, topo, by_address)) for address in addresses]
    results = host.tcp_open_all([(h, p) for _, h, port, bus, _ in targets for p in (port, bus)], timeout)
    return [{"node": address, "data port": port, "data": results[(h, port)] or "open", "bus port": bus,
             "bus port from": source, "bus": results[(h, bus)] or "open"} for address, h, port, bus, source in targets]


def port_checks(probes: list[dict]) -> list[Check]:
    """A failed check per node whose data or bus port refuses TCP, else one passing check."""
    checks = []
    for r in probes:
        closed = [f"{what} port {r[what + ' port']}: {r[what]}" for what in ("data", "bus") if r[what] != "open"]
        if closed:
            checks.append(Check(f"ports {r['node']}", "fail", "; ".join(closed) + ". Nodes gossip and fail over on "
                                "the cluster bus port (data port + 10000 unless cluster-port says otherwise): open "
                                "both ports between every node and this host"))
    if not checks:
        checks.append(Check("data and bus ports", "pass", f"all {len(probes)} nodes accept TCP on their data port and "
                            "cluster bus port from this host"))
    return checks


def headroom(facts: list[NodeFacts], memory_pct: float) -> list[Check]:
    """Memory against maxmemory and clients against maxclients, the worst node named."""
    checks = []
    limited = [f for f in facts if f.maxmemory]
    unlimited = [f.address for f in facts if not f.maxmemory]
    over = [f for f in limited if f.used_memory / f.maxmemory * 100 >= memory_pct]
    if over:
        checks.append(Check("memory vs maxmemory", "fail", ", ".join(
            f"{f.address} uses {f.used_memory / f.maxmemory * 100:.1f} %" for f in over)
            + f" of maxmemory (gate {memory_pct:.0f} %); free memory or raise maxmemory before moving slots"))
    elif unlimited:
        checks.append(Check("memory vs maxmemory", "warn", "maxmemory is 0 (unlimited), headroom unknown, on "
                            + ", ".join(unlimited)))
    else:
        worst = max(limited, key=lambda f: f.used_memory / f.maxmemory)
        checks.append(Check("memory vs maxmemory", "pass",
                            f"highest {worst.address}: {worst.used_memory / worst.maxmemory * 100:.1f} % of "
                            f"{worst.maxmemory / MB:.0f} MB (gate {memory_pct:.0f} %)"))
    counted = [f for f in facts if f.maxclients]
    busy = [f for f in counted if f.connected_clients / f.maxclients * 100 > CLIENTS_PCT]
    if busy:
        checks.append(Check("clients vs maxclients", "fail", ", ".join(
            f"{f.address}: {f.connected_clients} of {f.maxclients}" for f in busy)
            + f" client slots in use (over {CLIENTS_PCT:.0f} %); raise maxclients or find the leak"))
    elif counted:
        worst = max(counted, key=lambda f: f.connected_clients / f.maxclients)
        checks.append(Check("clients vs maxclients", "pass", f"highest {worst.address}: {worst.connected_clients} of "
                            f"{worst.maxclients} (limit {CLIENTS_PCT:.0f} %)"))
    return checks


def host_memory(facts: list[NodeFacts], memory_pct: float, ram_here: int | None = None) -> list[Check]:
    """Per host: the memory its nodes use against its RAM (fail at the gate) and their maxmemory added up (warn
    above its RAM). RAM is MemTotal where the nodes run on this host, else INFO's total_system_memory."""
    ram_here = host.mem_total() if ram_here is None else ram_here
    by_address = {f.address: f for f in facts}
    by_host = {label: [by_address[a] for a in nodes] for label, nodes in host.machines(list(by_address)).items()}
    checks = []
    for name, nodes in by_host.items():
        local = host.is_local(parse_address(nodes[0].address)[0])
        ram, source = ((ram_here, "MemTotal here") if local else
                       (max(f.total_system_memory for f in nodes), "total_system_memory in INFO"))
        if not ram:
            checks.append(Check(f"host memory {name}", "warn", f"not verifiable from here: the host's RAM is unknown "
                                f"for {len(nodes)} nodes"))
            continue
        used = sum(f.used_memory for f in nodes)
        limits = sum(f.maxmemory for f in nodes)
        pct = used / ram * 100
        detail = (f"{len(nodes)} nodes use {used / MB:.0f} MB, {pct:.1f} % of {ram / MB / 1024:.1f} GB RAM ({source}; "
                  f"gate {memory_pct:.0f} %)")
        unlimited = [f.address for f in nodes if not f.maxmemory]
        if pct >= memory_pct:
            checks.append(Check(f"host memory {name}", "fail", detail + "; a BGSAVE fork or a slot import could run "
                                "the host out of memory: free memory first"))
        elif unlimited or limits > ram:
            why = (f"maxmemory 0 (unlimited) on {', '.join(unlimited)}" if unlimited else
                   f"their maxmemory adds up to {limits / MB / 1024:.1f} GB, more than the RAM")
            checks.append(Check(f"host memory {name}", "warn", f"{detail}; {why}: nodes could outgrow the host "
                                "(forks for BGSAVE need copy-on-write headroom too)"))
        else:
            checks.append(Check(f"host memory {name}", "pass", f"{detail}; maxmemory adds up to "
                                f"{limits / MB / 1024:.1f} GB, {limits / ram * 100:.0f} % of the RAM"))
    return checks


def sample_cpu(facts: list[NodeFacts], creds: Credentials, seconds: float = 2.0) -> None:
    """Fill each node's cpu_pct: (used_cpu_sys + used_cpu_user) growth per second of wall time, as % of one core,
    from two INFO cpu readings `seconds` apart (all nodes sampled over the same window)."""
    clients = {f.address: node_client(f.address, creds, timeout=5.0) for f in facts}
    first: dict[str, tuple[dict, float]] = {}
    try:
        for address, client in clients.items():
            try:
                first[address] = (client.info("cpu"), time.monotonic())
            except (redis.RedisError, OSError, KeyError, ValueError):
                continue
        time.sleep(seconds)
        for f in facts:
            if f.address not in first:
                continue
            try:
                info = clients[f.address].info("cpu")
                before, t0 = first[f.address]
                f.cpu_pct = cpu_pct(before, info, time.monotonic() - t0)
            except (redis.RedisError, OSError, KeyError, ValueError):
                continue
    finally:
        for client in clients.values():
            client.close()


def cpu_check(facts: list[NodeFacts], cpu_pct: float, seconds: float) -> Check:
    """CPU of every node, as sampled, against the gate; nodes that could not be sampled are a warning."""
    sampled = [f for f in facts if f.cpu_pct is not None]
    over = [f for f in sampled if f.cpu_pct >= cpu_pct]
    missing = [f.address for f in facts if f.cpu_pct is None]
    if over:
        return Check("CPU", "fail", ", ".join(f"{f.address} at {f.cpu_pct:.0f} %" for f in over)
                     + f" of a core over {seconds:g} s (gate {cpu_pct:.0f} %); start when the load is lower")
    if missing or not sampled:
        return Check("CPU", "warn", "could not sample INFO cpu on " + (", ".join(missing) or "any node"))
    worst = max(sampled, key=lambda f: f.cpu_pct)
    return Check("CPU", "pass", f"highest {worst.address}: {worst.cpu_pct:.1f} % of a core over {seconds:g} s "
                 f"(gate {cpu_pct:.0f} %)")


def judge_kernel(name: str, value: str) -> tuple[str, str]:
    """pass or warn for one kernel setting's value, with the reason (thresholds from Redis's own warnings and docs)."""
    if name == "vm.overcommit_memory":
        if value == "1":
            return "pass", "1: a BGSAVE or AOF rewrite fork cannot fail for want of memory"
        return "warn", (f"{value} (want 1): the fork of BGSAVE/AOF rewrite can fail with 'Cannot allocate memory' "
                        "when memory is tight; Redis logs a WARNING at start for this. Set `sysctl "
                        "vm.overcommit_memory=1`")
    if name == "transparent_hugepage":
        chosen = re.search(r"\[(\w+)\]", value)
        mode = chosen.group(1) if chosen else value
        if mode == "never":
            return "pass", "never: no huge-page copy-on-write after fork"
        if mode == "madvise":
            return "warn", ("madvise: only memory that asks gets huge pages and Redis does not ask, so the risk is "
                            "small, but Redis's latency guide recommends never; `echo never > "
                            "/sys/kernel/mm/transparent_hugepage/enabled`")
        return "warn", (f"{mode}: forks copy huge pages on write, so latency spikes and memory grows during BGSAVE "
                        "(Redis 7 opts its own process out while disable-thp is yes); set it to never")
    if name == "vm.swappiness":
        try:
            level = int(value)
        except ValueError:
            return "warn", f"unreadable value {value!r}"
        if level <= SWAPPINESS_MAX:
            return "pass", f"{level}: the kernel swaps Redis memory out only under real pressure"
        return "warn", (f"{level} (want at most {SWAPPINESS_MAX}, 1 is common for databases): the kernel may swap "
                        "Redis memory out, and a swapped-out key costs a disk read; `sysctl vm.swappiness=1`")
    raise ValueError(f"unknown kernel setting {name}")


def kernel_checks(addresses: list[str], root: Path = Path("/")) -> list[Check]:
    """The kernel settings of this host when nodes run on it (pass/warn each); nodes on other hosts are a warning
    that says how to check them there."""
    hosts = sorted({parse_address(a)[0] for a in addresses})
    local = [h for h in hosts if host.is_local(h)]
    remote = [h for h in hosts if h not in local]
    checks = []
    if local:
        here = sum(1 for a in addresses if parse_address(a)[0] in local)
        for name, value in host.kernel_settings(root).items():
            if isinstance(value, OSError):
                checks.append(Check(f"kernel {name}", "warn", f"cannot read it on this host ({value})"))
                continue
            status, reason = judge_kernel(name, value)
            checks.append(Check(f"kernel {name}", status, f"{reason} (this host, {here} nodes)"))
    if remote:
        elsewhere = host.machines([a for a in addresses if parse_address(a)[0] in remote])
        listed = ", ".join(f"{label} (nodes {', '.join(nodes)})" for label, nodes in elsewhere.items())
        checks.append(Check("kernel settings on other hosts", "warn", "not verifiable from here: " + listed
                            + f". Not checked on these {len(elsewhere)} hosts: "
                            + ", ".join(host.KERNEL_FILES) + " (read from /proc and /sys of the host a node runs on). "
                            "By hand on each: `sysctl vm.overcommit_memory vm.swappiness` and `cat "
                            "/sys/kernel/mm/transparent_hugepage/enabled` should show 1, at most "
                            f"{SWAPPINESS_MAX}, and [never]"))
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


def cluster_state(topo: Topology, facts: list[NodeFacts]) -> Check:
    """Every member of the cluster reports cluster_state:ok (new nodes not yet joined are left out)."""
    members = [f for f in facts if topo.by_address(f.address) is not None]
    bad = [f"{f.address} says {f.cluster_state}" for f in members if f.cluster_state != "ok"]
    if bad:
        return Check("cluster state", "fail", "; ".join(bad) + "; repair the cluster (`runbook check`) first")
    return Check("cluster state", "pass", f"all {len(members)} members report cluster_state:ok")


def scan_big_keys(topo: Topology, settings: BigKeys, creds: Credentials,
                  progress: bool | None = None) -> tuple[bigkeys.ScanResult | None, list[Check]]:
    """Scan every shard for big keys (on an in-sync replica where it has one), paced as the params say; a scan that
    cannot run is a failed check."""
    try:
        result = bigkeys.scan(topo, creds, settings.threshold_bytes, count=settings.scan_count, top_n=settings.top_n,
                              max_ops_per_s=settings.max_ops_per_s or None, progress=progress,
                              max_lag_s=settings.replica_max_lag_s)
    except CheckFailed as e:
        return None, [Check("big keys", "fail", str(e))]
    return result, bigkeys.source_checks(result) + bigkeys.checks(result, settings)


def headroom_table(facts: list[NodeFacts]) -> list[dict]:
    """One row per node: memory, CPU, clients and cluster state, for a notebook table."""
    return [{"node": f.address, "role": f.role, "new": f.new, "used MB": round(f.used_memory / MB, 1),
             "maxmemory MB": round(f.maxmemory / MB), "% of maxmemory":
                 round(f.used_memory / f.maxmemory * 100, 1) if f.maxmemory else None,
             "CPU % of a core": None if f.cpu_pct is None else round(f.cpu_pct, 1),
             "clients": f.connected_clients, "maxclients": f.maxclients, "cluster_state": f.cluster_state}
            for f in facts]


def baseline(topo: Topology, creds: Credentials, new_addresses: list[str]) -> dict:
    """The before-picture later steps compare with: snapshot, key count, and whether no new node had joined yet."""
    joined = [a for a in new_addresses if topo.by_address(a) is not None]
    return {**topo.snapshot(), "keys": key_count(topo, creds), "keyspace_stats": keyspace_stats(topo, creds),
            "pre_expansion": not joined, "joined": joined}


def run_checks(topo: Topology, params: Params, creds: Credentials) -> Findings:
    """Every preflight check but the big-key scan, in order; fails stop the run before anything changes."""
    gates = params.model.gates
    sample_s = params.model.preflight.cpu_sample_s
    facts, checks = gather(topo, params, creds)
    addresses = list(node_roles(topo, params))
    if facts:
        checks += [version_parity(facts), config_parity(facts)]
    probes = port_probes(addresses, topo, facts)
    checks += port_checks(probes)
    if facts:
        sample_cpu(facts, creds, sample_s)
        checks += headroom(facts, gates.memory_pct)
        checks += host_memory(facts, gates.memory_pct)
        checks.append(cpu_check(facts, gates.cpu_pct, sample_s))
    checks += kernel_checks(addresses)
    checks += new_nodes_fresh(topo, params, creds)
    checks.append(cluster_state(topo, facts))
    checks += health(topo, pending_replicas=replicas_pending(params))
    return Findings(facts=facts, ports=probes, checks=checks)
