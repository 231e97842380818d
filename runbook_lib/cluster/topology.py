"""The cluster model: CLUSTER NODES parsed from every node, slot owners, open slots, agreement, snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from runbook_lib.addresses import format_address, parse_address, resolve, same_node
from runbook_lib.cluster.connection import node_client
from runbook_lib.config import Credentials
from runbook_lib.exceptions import BadInput

SLOTS = 16384


@dataclass(frozen=True)
class NodeEntry:
    """One line of CLUSTER NODES as one observer sees it."""

    id: str
    address: str
    flags: frozenset[str]
    master_id: str | None
    config_epoch: int
    link_state: str
    slots: frozenset[int] = frozenset()
    migrating: dict[int, str] = field(default_factory=dict)
    importing: dict[int, str] = field(default_factory=dict)
    bus_port: int = 0
    ip: str = ""
    port: int = 0
    hostname: str = ""

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def healthy(self) -> bool:
        return not (self.flags & {"fail", "fail?", "handshake", "noaddr"})


def parse_cluster_nodes(text: str) -> dict[str, NodeEntry]:
    """Parse CLUSTER NODES output into entries by node id (slot ranges expanded, open-slot markers kept).

    A node that announces a hostname (`ip:port@cport,hostname`, cluster-announce-hostname) that resolves here is
    addressed by it, so TLS certificates that name hosts verify; otherwise by its IP (IPv6 in brackets)."""
    entries: dict[str, NodeEntry] = {}
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_id, addr, flags, master, _ping, _pong, epoch, link, *slot_fields = parts
        endpoint, _, rest = addr.partition(",")
        ip_port, _, cport = endpoint.partition("@")
        hostname = rest.split(",")[0] if rest else ""
        ip, port = _split_ip_port(ip_port)
        named = hostname and port and resolve(hostname)
        address = format_address(hostname, port) if named else (format_address(ip, port) if ip else ip_port)
        slots: set[int] = set()
        migrating: dict[int, str] = {}
        importing: dict[int, str] = {}
        for f in slot_fields:
            if f.startswith("["):
                body = f.strip("[]")
                if "->-" in body:
                    s, peer = body.split("->-")
                    migrating[int(s)] = peer
                elif "-<-" in body:
                    s, peer = body.split("-<-")
                    importing[int(s)] = peer
            elif "-" in f:
                lo, hi = f.split("-")
                slots.update(range(int(lo), int(hi) + 1))
            else:
                slots.add(int(f))
        entries[node_id] = NodeEntry(
            id=node_id, address=address, flags=frozenset(flags.split(",")),
            master_id=None if master == "-" else master, config_epoch=int(epoch), link_state=link,
            slots=frozenset(slots), migrating=migrating, importing=importing,
            bus_port=int(cport) if cport.isdigit() else 0, ip=ip, port=port, hostname=hostname)
    return entries


def _split_ip_port(ip_port: str) -> tuple[str, int]:
    """"10.0.0.5:7000" or "2001:db8::5:7000" (Redis writes IPv6 without brackets) into IP and port; a node
    without an address yet (":0", noaddr) gives ("", port)."""
    ip, _, port = ip_port.rpartition(":")
    return ip.strip("[]"), int(port) if port.isdigit() else 0


def slot_ranges(slots) -> list[tuple[int, int]]:
    """Compress slot numbers into sorted inclusive ranges."""
    out: list[tuple[int, int]] = []
    for s in sorted(slots):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def format_ranges(slots) -> str:
    """Slots as "0-5460,5462" for humans."""
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in slot_ranges(slots))


@dataclass
class NodeView:
    """What one node (the observer) says about the whole cluster."""

    address: str
    entries: dict[str, NodeEntry]

    @property
    def myself(self) -> NodeEntry:
        return next(e for e in self.entries.values() if "myself" in e.flags)

    def owners(self) -> list[str | None]:
        """Owner node id for every slot, None where no master claims it."""
        owner: list[str | None] = [None] * SLOTS
        for e in self.entries.values():
            if e.is_master:
                for s in e.slots:
                    owner[s] = e.id
        return owner


@dataclass
class Topology:
    """Views of the cluster from every reachable node, with the seed's view as the reference."""

    seed: str
    views: dict[str, NodeView]
    unreachable: dict[str, str] = field(default_factory=dict)

    @property
    def reference(self) -> NodeView:
        return self.views[self.seed]

    @property
    def nodes(self) -> dict[str, NodeEntry]:
        """Every node by id, each described by its own view of itself where reachable."""
        out = dict(self.reference.entries)
        for view in self.views.values():
            me = view.myself
            if me.id in out:
                out[me.id] = me
        return out

    def by_address(self, address: str) -> NodeEntry | None:
        """The node an address as written in params names: the same string, its announced hostname, or a name that
        resolves (IPv4 or IPv6) to the IP the cluster knows it by, on the same port."""
        nodes = list(self.nodes.values())
        exact = next((e for e in nodes if e.address == address), None)
        return exact or next((e for e in nodes if same_node(address, e.ip, e.port, e.hostname)), None)

    def known_as(self, address: str) -> str:
        """How the cluster knows the node params call `address`, for messages: "name:port (10.0.0.5:7000 in the
        cluster)"; the address alone when the cluster spells it alike or the node is not a member."""
        entry = self.by_address(address)
        if entry is None:
            return address
        spellings = [a for a in dict.fromkeys((entry.address, format_address(entry.ip, entry.port) if entry.ip else ""))
                     if a and a != address]
        return f"{address} ({', '.join(spellings)} in the cluster)" if spellings else address

    def masters(self) -> list[NodeEntry]:
        """Masters that are part of the cluster and healthy, sorted by address."""
        return sorted((e for e in self.nodes.values() if e.is_master and e.healthy), key=lambda e: _addr_key(e.address))

    def replicas_of(self, master_id: str) -> list[NodeEntry]:
        return sorted((e for e in self.nodes.values() if e.master_id == master_id and not e.is_master),
                      key=lambda e: _addr_key(e.address))

    def owners(self) -> list[str | None]:
        """Owner of every slot as the masters claim it themselves (highest config epoch wins), else the seed's view.

        Right after a handover the source and target already agree while a third node may not have heard yet; the
        claims are what the next change must start from.
        """
        owner = list(self.reference.owners())
        epoch = [-1] * SLOTS
        for view in self.views.values():
            me = view.myself
            if not me.is_master:
                continue
            for s in me.slots:
                if me.config_epoch > epoch[s]:
                    owner[s], epoch[s] = me.id, me.config_epoch
        return owner

    def slots_by_master(self) -> dict[str, set[int]]:
        """Slots each master (by id) owns, as the masters claim them."""
        out: dict[str, set[int]] = {m.id: set() for m in self.masters()}
        for s, owner in enumerate(self.owners()):
            if owner is not None:
                out.setdefault(owner, set()).add(s)
        return out

    def uncovered(self) -> list[int]:
        return [s for s, o in enumerate(self.owners()) if o is None]

    def open_slots(self) -> list[dict]:
        """Every IMPORTING/MIGRATING marker any node reports about itself."""
        out = []
        for view in self.views.values():
            me = view.myself
            for s, peer in sorted(me.migrating.items()):
                out.append({"node": me.address, "slot": s, "state": "migrating", "peer": peer})
            for s, peer in sorted(me.importing.items()):
                out.append({"node": me.address, "slot": s, "state": "importing", "peer": peer})
        return out

    def disagreements(self) -> list[str]:
        """Differences between the nodes' views: slot owners and the set of known nodes."""
        problems = []
        ref_owners = self.reference.owners()
        ref_ids = {i for i, e in self.reference.entries.items() if "handshake" not in e.flags}
        for addr, view in self.views.items():
            if addr == self.seed:
                continue
            owners = view.owners()
            diff = sum(1 for a, b in zip(owners, ref_owners) if a != b)
            if diff:
                problems.append(f"{addr} disagrees with {self.seed} on the owner of {diff} slots")
            ids = {i for i, e in view.entries.items() if "handshake" not in e.flags}
            if ids != ref_ids:
                problems.append(f"{addr} knows {len(ids)} nodes, {self.seed} knows {len(ref_ids)}")
        return problems

    def snapshot(self) -> dict:
        """A JSON-able record of who owns what and who replicates whom, for rollback and reports."""
        owned = self.slots_by_master()
        return {
            "seed": self.seed,
            "masters": [{"id": m.id, "address": m.address, "config_epoch": m.config_epoch,
                         "slots": format_ranges(owned.get(m.id, ())),
                         "slot_count": len(owned.get(m.id, ())),
                         "replicas": [r.address for r in self.replicas_of(m.id)]} for m in self.masters()],
            "open_slots": self.open_slots(),
            "uncovered": len(self.uncovered()),
        }


def _addr_key(address: str) -> tuple[str, int]:
    try:
        return parse_address(address)
    except ValueError:
        return address, 0


def read_view(client: redis.Redis, address: str) -> NodeView:
    """CLUSTER NODES of one node, parsed."""
    raw = client.execute_command("CLUSTER", "NODES")
    text = raw.decode() if isinstance(raw, bytes) else raw
    return NodeView(address=address, entries=parse_cluster_nodes(text))


def observe(seed: str, creds: Credentials, extra: list[str] | None = None) -> Topology:
    """Read CLUSTER NODES from the seed and from every node it knows (plus `extra`), noting the unreachable."""
    try:
        seed_view = read_view(node_client(seed, creds, timeout=5.0), seed)
    except redis.AuthenticationError as e:
        raise BadInput(f"seed {seed}: authentication failed ({e}); check the password source and username") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise BadInput(f"seed {seed}: cannot connect ({e}); is the cluster up and the address right?") from None
    except redis.ResponseError as e:
        raise BadInput(f"seed {seed}: {e} (is it a cluster-mode node and the password right?)") from None
    topo = Topology(seed=seed, views={seed: seed_view})
    me = seed_view.myself.id
    addresses = [e.address for e in seed_view.entries.values() if e.healthy and e.id != me]
    written = [a for a in (extra or []) if a not in addresses and a != seed
               and not any(same_node(a, e.ip, e.port, e.hostname) for e in seed_view.entries.values())]
    for addr in addresses + written:
        try:
            topo.views[addr] = read_view(node_client(addr, creds, timeout=5.0), addr)
        except (redis.RedisError, OSError) as e:
            topo.unreachable[addr] = str(e)
    return topo


def cluster_info(client: redis.Redis) -> dict[str, str]:
    """CLUSTER INFO as a dict of strings (cluster_state, cluster_known_nodes, ...)."""
    raw = client.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)


def parse_ranges(text: str) -> set[int]:
    """Inverse of format_ranges: "0-5460,5462" to a set of slots."""
    slots: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        slots.update(range(int(lo), int(hi or lo) + 1))
    return slots


def key_counts(topo: Topology, creds: Credentials, only: set[int] | None = None) -> dict[int, int]:
    """Keys per slot (all slots, or `only` these), from CLUSTER COUNTKEYSINSLOT pipelined to each slot's owner."""
    counts: dict[int, int] = {}
    address = {e.id: e.address for e in topo.nodes.values()}
    for owner, slots in topo.slots_by_master().items():
        ordered = sorted(slots if only is None else slots & only)
        pipe = node_client(address[owner], creds).pipeline(transaction=False)
        for s in ordered:
            pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)
        counts.update(zip(ordered, (int(n) for n in pipe.execute())))
    return counts


def nodes_table(topo: Topology, new_addresses: list[str] | tuple = ()) -> list[dict]:
    """One row per node: address, role, master, slots, flags, and whether the expansion adds it."""
    owned = topo.slots_by_master()
    addr = {e.id: e.address for e in topo.nodes.values()}
    added = {e.id for e in map(topo.by_address, new_addresses) if e is not None}
    rows = []
    for e in sorted(topo.nodes.values(), key=lambda e: _addr_key(e.address)):
        rows.append({"address": e.address, "id": e.id[:12], "role": "master" if e.is_master else "replica",
                     "master": addr.get(e.master_id or "", ""), "slots": len(owned.get(e.id, ())),
                     "flags": ",".join(sorted(e.flags - {"myself"})), "new": e.id in added})
    return rows


def names(topo: Topology) -> dict[str, str]:
    """Node id → address, for tables and charts."""
    return {e.id: e.address for e in topo.nodes.values()}


def named(counts: dict[str, int], id_names: dict[str, str]) -> dict[str, int]:
    """Re-key a per-node-id dict by address (ids that are not nodes yet stay as they are)."""
    return {id_names.get(k, k): v for k, v in counts.items()}


def observe_any(addresses: list[str], creds: Credentials) -> Topology:
    """Observe from the first of these nodes that answers (the seed may be the node that just failed)."""
    problems = []
    for address in dict.fromkeys(addresses):
        try:
            return observe(address, creds)
        except BadInput as e:
            problems.append(str(e))
    raise BadInput("no node answered: " + "; ".join(problems))


def misplaced_keys(topo: Topology, creds: Credentials, chunk: int = 4096) -> dict[int, dict[str, int]]:
    """Keys a master holds of slots it does not own, by slot and master id: COUNTKEYSINSLOT of every slot it does
    not own, pipelined. Clients never see such keys; a sound cluster has none (open slots mid-move aside)."""
    owners = topo.owners()
    found: dict[int, dict[str, int]] = {}
    for master in topo.masters():
        client = node_client(master.address, creds)
        others = [s for s in range(SLOTS) if owners[s] != master.id]
        for i in range(0, len(others), chunk):
            part = others[i: i + chunk]
            pipe = client.pipeline(transaction=False)
            for s in part:
                pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)
            for s, n in zip(part, pipe.execute()):
                if n:
                    found.setdefault(s, {})[master.id] = int(n)
    return found
