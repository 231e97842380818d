"""The mover's view of the cluster's nodes: which master serves each shard now (followed through failovers, from the
live cluster and the journal's replica pairs), where a node is reached, and one round trip to one node with its error
replies classified (a topology change, or a stop of the run)."""

from __future__ import annotations

import threading

import redis

from runbook_lib.cluster import errors
from runbook_lib.cluster.connection import NodeClients
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.slots import Shards
from runbook_lib.cluster.topology import Topology, observe_any
from runbook_lib.config import Credentials, parse_address
from runbook_lib.exceptions import MigrationError


class TopologyChanged(Exception):
    """A node stopped being what the mover thought (failover, not a master, unreachable): read again and retry."""


def journal_pairs(journal: Journal) -> list[tuple[str, str]]:
    """Every (replica, master) pair the journal recorded, so a failover before a resume is still followed."""
    return [tuple(p) for e in journal.entries() if e["event"] == "replication" for p in e.get("pairs", [])]


class Nodes:
    """The masters and addresses last read, shared by the mover's loop, its transitions and its MIGRATE rounds; every
    replica pair seen is journaled (`replication`)."""

    def __init__(self, topology: Topology, creds: Credentials, journal: Journal, timeout_s: float) -> None:
        self.creds = creds
        self.journal = journal
        self._clients = NodeClients(creds, timeout=timeout_s)
        self._refresh_lock = threading.Lock()
        self.address: dict[str, str] = {}
        self.migrate_to: dict[str, tuple[str, int]] = {}
        self.shards = Shards(journal_pairs(journal))
        self._adopt(topology)

    def _adopt(self, topo: Topology) -> None:
        self.topo = topo
        self.address.update({e.id: e.address for e in topo.nodes.values()})
        self.migrate_to.update({e.id: (e.ip, e.port) for e in topo.nodes.values() if e.ip and e.port})
        self.masters = [m.id for m in topo.masters()]
        self._master_of = {e.id: e.master_id for e in topo.nodes.values() if not e.is_master and e.master_id}
        learned = self.shards.learn({r: m for r, m in self._master_of.items() if m})
        if learned:
            self.journal.record("replication", pairs=[list(p) for p in learned])

    def refresh(self) -> None:
        """Re-read the cluster (from any reachable master) after an error that may mean a failover."""
        with self._refresh_lock:
            self._adopt(observe_any([self.topo.seed] + [self.address[m] for m in self.masters], self.creds))

    def current_master(self, node_id: str) -> str:
        """The master now serving the shard `node_id` served: itself, or the replica that took over from it."""
        found = self.shards.current(node_id, set(self.masters), self._master_of)
        if found is None:
            raise TopologyChanged(f"{self.name(node_id)} is not a healthy master and no replica has taken over yet")
        return found

    def migrate_endpoint(self, node_id: str) -> tuple[str, int]:
        """Where a source's MIGRATE reaches a node: the IP and port the cluster knows it by (node to node, like the
        bus), not the announced hostname, which only the clients may be able to resolve."""
        return self.migrate_to.get(node_id) or parse_address(self.address[node_id])

    def name(self, node_id: str) -> str:
        return self.address.get(node_id, node_id[:8])

    def client(self, node_id: str) -> redis.Redis:
        """A cached client for a node id, shared by the worker threads (redis-py pools connections)."""
        return self._clients.get(self.address[node_id])

    def pipeline(self, node_id: str, commands: list[tuple], raise_on_error: bool = True) -> list:
        """Send commands to one node in one round trip; with raise_on_error, the first error reply raises."""
        if not commands:
            return []
        pipe = self.client(node_id).pipeline(transaction=False)
        for c in commands:
            pipe.execute_command(*c)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise TopologyChanged(f"{self.name(node_id)} unreachable: {e}") from e
        if raise_on_error:
            self.check(node_id, replies)
        return replies

    def check(self, node_id: str, replies: list, ok: tuple[str, ...] = ()) -> None:
        """Raise on the first error reply that is not in `ok`: a topology change, or a stop of the run."""
        for r in replies:
            if not isinstance(r, Exception):
                continue
            kind = errors.classify(r)
            if kind in ok:
                continue
            if kind in (errors.TOPOLOGY, errors.NOT_OWNER):
                raise TopologyChanged(f"{self.name(node_id)}: {r}")
            raise MigrationError(-1, f"{self.name(node_id)} answered {r}; the slot is left as it is: "
                                     "`runbook check` shows it")

    def each(self, node_id: str, command: str, keys: list[bytes], asking: bool) -> list:
        """COMMAND key on one node for each key, each after ASKING where the slot is importing there."""
        pipe = self.client(node_id).pipeline(transaction=False)
        for k in keys:
            if asking:
                pipe.execute_command("ASKING")
            pipe.execute_command(command, k)
        replies = pipe.execute(raise_on_error=False)
        return replies[1::2] if asking else replies
