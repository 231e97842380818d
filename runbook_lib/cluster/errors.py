"""Redis replies and client errors classified once, for every path that changes slots.

The mover, repair and rollback act on the class, never on the text: a topology change is retried after the cluster
is read again, a BUSYKEY is settled by comparing values, a failed MIGRATE stops its slot with each key located, and
anything else stops the run.
"""

from __future__ import annotations

import redis

TOPOLOGY = "topology"
"""The node is not what the mover thought (failover, not a master, unreachable, loading): read the cluster again, and
the state machine decides afresh."""
HOLDS_KEYS = "holds_keys"
"""A node refused SETSLOT NODE because it still holds keys of the slot: never retried silently (redis#2969)."""
BUSYKEY = "busykey"
"""MIGRATE met a key that already exists on the target."""
MIGRATE_FAILED = "migrate_failed"
"""MIGRATE could not finish (IOERR, timeout): the keys may be on either side."""
ALREADY_OWNER = "already_owner"
"""SETSLOT IMPORTING on the slot's owner: nothing to open there."""
NOT_OWNER = "not_owner"
"""SETSLOT MIGRATING on a node that no longer owns the slot."""
FATAL = "fatal"

_TOPOLOGY_ERRORS = (redis.exceptions.AskError, redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
                    redis.exceptions.ReadOnlyError)
"""redis-py parses these replies into their own classes and drops the word that names them (a MOVED reply's text is
only "<slot> <address>"), so they are known by class, before any text is read."""
_TOPOLOGY_MARKERS = ("READONLY", "MOVED", "ASK ", "CLUSTERDOWN", "TRYAGAIN", "only with masters",
                     "I don't know about node", "LOADING", "MASTERDOWN", "not a master", "NOREPLICAS")


def classify(error: BaseException, during_migrate: bool = False) -> str:
    """The class of one error; `during_migrate` when it is the reply to (or the failure of) a MIGRATE."""
    text = str(error)
    if isinstance(error, redis.TimeoutError):
        return MIGRATE_FAILED if during_migrate else TOPOLOGY
    if isinstance(error, (redis.ConnectionError, OSError, *_TOPOLOGY_ERRORS)):
        return TOPOLOGY
    if "still hold keys" in text:
        return HOLDS_KEYS
    if "BUSYKEY" in text:
        return BUSYKEY
    if during_migrate and ("IOERR" in text or "timeout" in text.lower()):
        return MIGRATE_FAILED
    if "already the owner" in text:
        return ALREADY_OWNER
    if "not the owner" in text:
        return NOT_OWNER
    if any(marker in text for marker in _TOPOLOGY_MARKERS):
        return TOPOLOGY
    return FATAL
