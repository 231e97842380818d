"""Replies classified once (cluster/errors.py), read from redis-py's own exception objects."""

import pytest
import redis
from redis._parsers import BaseParser

from runbook_lib.cluster import errors


def reply(text: str) -> redis.RedisError:
    """The exception redis-py raises for an error reply with this text (its own parser: MOVED, ASK, TRYAGAIN... come
    back as their own classes, their first word dropped)."""
    return BaseParser.parse_error(text)


@pytest.mark.parametrize("text", ["MOVED 4111 127.0.0.1:9753", "ASK 4111 127.0.0.1:9753", "TRYAGAIN Multiple keys",
                                  "CLUSTERDOWN The cluster is down", "READONLY You can't write against a replica.",
                                  "LOADING Redis is loading", "MASTERDOWN Link with MASTER is down"])
def test_a_topology_reply_is_a_topology_change_also_during_a_migrate(text):
    error = reply(text)
    assert errors.classify(error) == errors.TOPOLOGY
    assert errors.classify(error, during_migrate=True) == errors.TOPOLOGY


def test_a_moved_reply_keeps_no_word_that_names_it():
    error = reply("MOVED 4111 127.0.0.1:9753")
    assert isinstance(error, redis.exceptions.MovedError) and "MOVED" not in str(error)


@pytest.mark.parametrize("text, kind", [
    ("BUSYKEY Target key name already exists.", errors.BUSYKEY),
    ("IOERR error or timeout reading to target instance", errors.MIGRATE_FAILED),
    ("ERR Can't assign hashslot 7 to a different node while I still hold keys for this hash slot.", errors.HOLDS_KEYS),
    ("ERR I'm already the owner of hash slot 7", errors.ALREADY_OWNER),
    ("ERR I'm not the owner of hash slot 7", errors.NOT_OWNER),
    ("ERR unknown command", errors.FATAL),
])
def test_other_replies(text, kind):
    assert errors.classify(reply(text), during_migrate=True) == kind
