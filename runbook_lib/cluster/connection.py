"""Clients for single nodes and for the cluster, authenticated from Credentials (password, ACL user, TLS)."""

from __future__ import annotations

import ipaddress
import threading
from typing import Iterable

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from runbook_lib.addresses import is_ip
from runbook_lib.config import Credentials, parse_address
from runbook_lib.exceptions import BadInput


def _tls_kwargs(creds: Credentials) -> dict:
    if not creds.tls:
        return {}
    return {"ssl": True, "ssl_ca_certs": creds.ca_file or None, "ssl_certfile": creds.cert_file or None,
            "ssl_keyfile": creds.key_file or None}


def _auth_kwargs(creds: Credentials) -> dict:
    return {"username": creds.username or None, "password": creds.password or None}


CLIENT_NAME = "runbook"
"""The name of every connection the runbook makes to a single node, so a node's CLIENT LIST tells the applications'
connections from ours (the traffic probe's cluster clients stay unnamed: they stand for applications)."""
LOCK_CLIENT_NAME = f"{CLIENT_NAME}-lock"
"""The name of the run lock's cluster client (acquire, heartbeat, release): the runbook's own too."""


def node_client(address: str, creds: Credentials, timeout: float = 10.0) -> redis.Redis:
    """A client for one node (bytes in, bytes out), with no automatic retries so that errors surface."""
    host, port = parse_address(address)
    return redis.Redis(host=host, port=port, socket_timeout=timeout, socket_connect_timeout=min(timeout, 5.0),
                       decode_responses=False, retry=Retry(NoBackoff(), 0), client_name=CLIENT_NAME,
                       **_auth_kwargs(creds), **_tls_kwargs(creds))


def _readonly_on_connect(connection) -> None:
    """The usual handshake (AUTH, CLIENT SETNAME), then READONLY: a replica then answers reads of its master's keys
    itself instead of redirecting them with MOVED."""
    connection.on_connect()
    connection.send_command("READONLY")
    connection.read_response()


def readonly_client(address: str, creds: Credentials, timeout: float = 10.0) -> redis.Redis:
    """A node client like `node_client` whose every connection sends READONLY first (needs +readonly in ACL), for
    reading keys on a replica; harmless on a master."""
    host, port = parse_address(address)
    return redis.Redis(host=host, port=port, socket_timeout=timeout, socket_connect_timeout=min(timeout, 5.0),
                       decode_responses=False, retry=Retry(NoBackoff(), 0), client_name=CLIENT_NAME,
                       redis_connect_func=_readonly_on_connect, **_auth_kwargs(creds), **_tls_kwargs(creds))


CLUSTER_COMMANDS = frozenset({"restore-asking", "restore", "migrate", "replconf", "psync", "sync"})
"""Commands no application sends (CLIENT LIST's `cmd=`): a source's MIGRATE keeps a cached connection to its target
that runs RESTORE-ASKING (RESTORE outside cluster mode), a connection running MIGRATE moves slots, and a replica
in its handshake runs REPLCONF and PSYNC before it is flagged S."""
MIGRATE_SETUP = frozenset({"auth", "select"})
"""What a source's MIGRATE sends first on a new cached connection; the cluster's own only from another node's IP."""


def _canonical_ip(host: str) -> str:
    """An IP literal in one spelling, an IPv4-mapped IPv6 address as its IPv4; "" for anything else."""
    if not is_ip(host):
        return ""
    ip = ipaddress.ip_address(host.split("%")[0])
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def _client_ip(addr: str) -> str:
    """The IP of a CLIENT LIST `addr=` ("10.0.0.5:4242", "[::1]:4242"), canonical, or "" (a unix socket)."""
    try:
        host, _ = parse_address(addr)
    except ValueError:
        return ""
    return _canonical_ip(host)


def application_connections(client: redis.Redis, node_ips: Iterable[str] = ()) -> int:
    """Connections on one node that are the applications', not the cluster's own: the runbook's (named `runbook...`),
    replication links, and another node's MIGRATE connection (RESTORE-ASKING; AUTH/SELECT from a node's IP in
    `node_ips`, the IPs the cluster knows its nodes by) are left out, so a target only MIGRATE reached counts 0."""
    nodes = {_canonical_ip(ip) for ip in node_ips} - {""}
    raw = client.execute_command("CLIENT", "LIST")
    text = raw.decode() if isinstance(raw, bytes) else raw
    count = 0
    for line in text.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        cmd = fields.get("cmd", "").lower()
        if fields.get("name", "").startswith(CLIENT_NAME) or set(fields.get("flags", "")) & {"S", "M"} \
                or cmd in CLUSTER_COMMANDS \
                or (cmd in MIGRATE_SETUP and not fields.get("name") and _client_ip(fields.get("addr", "")) in nodes):
            continue
        count += 1
    return count


class NodeClients:
    """One cached node client per address, safe to share between threads.

    Creation is locked: a client created twice for one address would be dropped, and redis-py closes a dropped
    client's pool, breaking a connection another thread is still using ("I/O operation on closed file").
    """

    def __init__(self, creds: Credentials, timeout: float = 10.0) -> None:
        self.creds = creds
        self.timeout = timeout
        self._clients: dict[str, redis.Redis] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> redis.Redis:
        """The client for `address`, created on first use."""
        with self._lock:
            client = self._clients.get(address)
            if client is None:
                client = self._clients[address] = node_client(address, self.creds, timeout=self.timeout)
            return client

    def close(self) -> None:
        """Close every cached client's connections."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def cluster_client(seeds: list[str], creds: Credentials, timeout: float = 5.0,
                   client_class: type[RedisCluster] = RedisCluster, name: str | None = None) -> RedisCluster:
    """A cluster-aware client (decoded strings) that follows MOVED and ASK like an application would.

    `client_class` may be a RedisCluster subclass (the traffic probe's AskSafeCluster). `name` names its connections
    (CLIENT SETNAME): the runbook's own start with CLIENT_NAME, so `application_connections` leaves them out; the
    probe's stay unnamed, standing for applications.
    """
    nodes = [ClusterNode(*parse_address(a)) for a in seeds]
    return client_class(startup_nodes=nodes, decode_responses=True, socket_timeout=timeout, client_name=name,
                        **_auth_kwargs(creds), **_tls_kwargs(creds))


def ping(address: str, creds: Credentials) -> redis.Redis:
    """Connect, authenticate and PING one node; a clear BadInput says what failed and how to fix it."""
    client = node_client(address, creds, timeout=5.0)
    try:
        client.ping()
    except redis.AuthenticationError as e:
        raise BadInput(f"{address}: authentication failed ({e}); check the password source and username in params") from None
    except redis.ResponseError as e:
        if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
            raise BadInput(f"{address}: authentication failed ({e}); check the password source and username in params") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise BadInput(f"{address}: cannot connect ({e}); check that the node runs and the address is right") from None
    return client


def migrate_auth_args(creds: Credentials) -> list[str]:
    """The AUTH/AUTH2 tail of a MIGRATE command for these credentials."""
    if creds.username and creds.password:
        return ["AUTH2", creds.username, creds.password]
    if creds.password:
        return ["AUTH", creds.password]
    return []
