"""The probe's cluster clients: the two kinds its workers run (stock redis-py, as applications have it, and the
patched AskSafeCluster, which follows an ASK to a master it does not know yet), and the kinds of failure a request
ends in, for counting.
"""

from __future__ import annotations

import threading

import redis
from redis.cluster import PRIMARY, ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from runbook_lib.cluster.connection import cluster_client
from runbook_lib.config import Credentials

PATCHED, STOCK = "patched", "stock"
ASK_UNKNOWN_NODE = "ask-unknown-node"
"""The failure of a stock client sent by ASK to a master it does not know, and the note of a patched one that
followed such an ASK."""


class AskSafeCluster(RedisCluster):
    """A RedisCluster that follows an ASK redirect to a node it does not know yet (redis-py#4015, open in 8.1).

    Cause, in redis/cluster.py: on ASK, `_execute_command` looks the target up with `get_node(node_name="host:port")`
    in its nodes cache, which `NodesManager.initialize()` fills from CLUSTER SLOTS only. A master that owns no slot yet
    (a new master importing its first slots) is not in CLUSTER SLOTS, so the lookup returns None and
    `get_redis_connection(None)` raises AttributeError: 'NoneType' object has no attribute 'redis_connection';
    refreshing the tables cannot help, for the same reason. Workaround: while a command executes (the ASK lookup is
    the only lookup by name there), an unknown node named host:port is registered as a primary, as redis-py already
    does for the target of a MOVED, so the ASK is followed: ASKING, then the command, on that node. The slot table is
    left alone (an ASK is one-shot) and the next refresh drops the entry; outside commands `get_node` is unchanged.
    `ask_unknown_targets` counts these events. Pipelines of this client are plain ClusterPipelines, not covered:
    retry their failed commands through the client.
    """

    ask_unknown_targets = 0

    def __init__(self, *args, **kwargs) -> None:
        self._executing = threading.local()
        super().__init__(*args, **kwargs)

    def _execute_command(self, target_node, *args, **kwargs):
        self._executing.active = True
        try:
            return super()._execute_command(target_node, *args, **kwargs)
        finally:
            self._executing.active = False

    def get_node(self, host: str | None = None, port: int | None = None,
                 node_name: str | None = None) -> ClusterNode | None:
        node = super().get_node(host, port, node_name)
        if node is None and node_name and getattr(self._executing, "active", False):
            node = self._learn_node(node_name)
        return node

    def _learn_node(self, node_name: str) -> ClusterNode | None:
        """Register the node an ASK names (host:port) as a primary, like redis-py does for a MOVED target."""
        host, sep, port = node_name.rpartition(":")
        if not sep or not port.isdigit():
            return None
        manager = self.nodes_manager
        with manager._lock:
            node = manager.nodes_cache.setdefault(node_name, ClusterNode(host, int(port), PRIMARY))
        self.ask_unknown_targets += 1
        return node


def ask_safe_client(seeds: list[str], creds: Credentials, timeout: float = 5.0) -> AskSafeCluster:
    """A cluster client like `connection.cluster_client`, with the ASK workaround of AskSafeCluster."""
    client = cluster_client(seeds, creds, timeout=timeout, client_class=AskSafeCluster)
    assert isinstance(client, AskSafeCluster)
    return client


def classify(error: BaseException) -> str:
    """The kind of a failed request, for counting: timeout, connection, clusterdown, tryagain, redirect, ..."""
    if isinstance(error, redis.TimeoutError):
        return "timeout"
    if isinstance(error, redis.ConnectionError):
        return "connection"
    if isinstance(error, ClusterDownError):
        return "clusterdown"
    if isinstance(error, TryAgainError):
        return "tryagain"
    if isinstance(error, AskError):
        return "redirect"
    if isinstance(error, ClusterError):
        return "redirect_loop" if "TTL exhausted" in str(error) else "cluster"
    if isinstance(error, SlotNotCoveredError):
        return "slot_not_covered"
    if isinstance(error, redis.ResponseError):
        return "response"
    if isinstance(error, AttributeError) and "redis_connection" in str(error):
        return ASK_UNKNOWN_NODE
    if isinstance(error, (redis.RedisError, RedisClusterException)):
        return "redis"
    return type(error).__name__