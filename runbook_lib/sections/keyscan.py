"""Sizing one node's keys: SCAN pages, each page's MEMORY USAGE in one pipeline, the type and length only for the few
keys worth reporting, and every command paid for on a pacer that all the threads of a scan share."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import redis
from redis.crc import key_slot

from runbook_lib.exceptions import CheckFailed

LENGTH_COMMANDS = {"string": "STRLEN", "hash": "HLEN", "list": "LLEN", "set": "SCARD", "zset": "ZCARD",
                   "stream": "XLEN"}


@dataclass
class KeyStat:
    """One key: where it lives, its type, its length in the type's unit (bytes, fields, items) and MEMORY USAGE."""

    key: str
    node: str
    slot: int
    type: str
    length: int
    bytes: int


@dataclass
class Page:
    """One SCAN page sized: every key's (slot, bytes), and the full KeyStat of the keys picked for detail."""

    sizes: list[tuple[int, int]]
    detailed: list[KeyStat]


class Pacer:
    """Averages the commands sent by every thread sharing it to at most `rate` per second (None or 0: unlimited).

    Each `spend` books its commands on one shared schedule and sleeps until that schedule allows them, so N threads
    together go no faster than one would. `clock` and `sleep` are injectable for tests."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate or None
        self.clock, self.sleep = clock, sleep
        self.start = clock()
        self.sent = 0
        self._lock = threading.Lock()

    def spend(self, commands: int) -> None:
        """Count `commands` just sent, and wait until the average is back under the rate."""
        with self._lock:
            self.sent += commands
            due = self.start + self.sent / self.rate if self.rate else None
        if due is not None and (delay := due - self.clock()) > 0:
            self.sleep(delay)


def display(key: bytes) -> str:
    """A key as text, undecodable bytes escaped."""
    return key.decode(errors="backslashreplace")


def _send(client: redis.Redis, commands: list[tuple], pacer: Pacer) -> list:
    """One pipeline (one round trip) of `commands`, errors returned in place, paid for on the pacer."""
    if not commands:
        return []
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    replies = pipe.execute(raise_on_error=False)
    pacer.spend(len(commands))
    return replies


def _memory_usage(client: redis.Redis, address: str, keys: list[bytes], pacer: Pacer) -> list[int | None]:
    """MEMORY USAGE of every key in one pipeline; None for a key gone meanwhile."""
    sizes = _send(client, [("MEMORY", "USAGE", k) for k in keys], pacer)
    for size in sizes:
        if isinstance(size, Exception):
            raise CheckFailed(f"{address}: MEMORY USAGE failed ({size}); the user needs the +memory|usage command "
                              "(ACL), and +readonly to read a replica")
    return [None if size is None else int(size) for size in sizes]


def _details(client: redis.Redis, address: str, picked: list[tuple[bytes, int]], pacer: Pacer) -> list[KeyStat]:
    """TYPE of the picked keys in one pipeline, then the length command of each type in another; keys gone meanwhile
    are left out."""
    kinds = [t.decode() if isinstance(t, bytes) else str(t) for t in
             _send(client, [("TYPE", k) for k, _ in picked], pacer)]
    measured = [(k, size, kind) for (k, size), kind in zip(picked, kinds) if kind != "none"]
    asked = [(k, size, kind) for k, size, kind in measured if kind in LENGTH_COMMANDS]
    lengths = dict(zip((k for k, _, _ in asked),
                       _send(client, [(LENGTH_COMMANDS[kind], k) for k, _, kind in asked], pacer)))
    stats = []
    for k, size, kind in measured:
        length = lengths.get(k, 0)
        if isinstance(length, redis.ResponseError) and "WRONGTYPE" in str(length):
            length = 0
        elif isinstance(length, Exception):
            raise CheckFailed(f"{address}: {LENGTH_COMMANDS[kind]} failed ({length}); check the user's ACL permissions")
        stats.append(KeyStat(key=display(k), node=address, slot=key_slot(k), type=kind, length=int(length),
                             bytes=size))
    return stats


def size_page(client: redis.Redis, address: str, keys: list[bytes], pacer: Pacer,
              pick: Callable[[list[int]], list[int]]) -> Page:
    """Size one page of keys: MEMORY USAGE of all of them in one round trip, then TYPE and length of the keys at the
    indexes `pick` returns for the page's sizes (the big ones and those that may enter the top list)."""
    sizes = _memory_usage(client, address, keys, pacer)
    present = [(k, size) for k, size in zip(keys, sizes) if size is not None]
    chosen = [present[i] for i in pick([size for _, size in present])]
    return Page(sizes=[(key_slot(k), size) for k, size in present],
                detailed=_details(client, address, chosen, pacer) if chosen else [])


def walk(client: redis.Redis, address: str, count: int, pacer: Pacer, pick: Callable[[list[int]], list[int]],
         stop: threading.Event | None = None) -> Iterator[tuple[int, Page]]:
    """SCAN the node page by page (COUNT `count`), yielding (keys returned by SCAN, the page sized) until the cursor
    comes back to 0 or `stop` is set."""
    cursor = 0
    while stop is None or not stop.is_set():
        cursor, keys = client.scan(cursor, count=count)
        pacer.spend(1)
        if keys:
            yield len(keys), size_page(client, address, keys, pacer, pick)
        if cursor == 0:
            return
