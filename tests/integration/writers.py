"""Writers that keep overwriting keys while slots move, and the model their end state is checked against.

`Writers` runs N threads, each with its own stock redis-py `RedisCluster` client (no patching, loopback only), that
overwrite a fixed set of keys (each key written by one thread only, so its writes are ordered): strings set with
increasing per-key counters, with and without a TTL, EXPIRE/PERSIST alternation, INCR counters and hash fields.
Every write's outcome goes into the key's `KeyModel`: acknowledged, or ambiguous (any exception once the command may
have been sent: timeout, connection error, a redirection or cluster error after redis-py's own retries).

The model (pure, `KeyModel`/`check_key`): a key's end state must be one its history allows: the state after the last
acknowledged write with any subsequence of the later ambiguous writes applied in order (an INCR retried by redis-py
may be applied more than once: up to `RETRIES + 1` times). A state outside that set is a lost write (or a write
applied after a later acknowledged one), reported with the last acknowledged state and the candidates.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable

ABSENT = ("absent",)
"""The state of a key that does not exist."""

RETRIES = 10
"""How many times redis-py's RedisCluster may send one command again after a connection error or timeout (its
`retry`, 10 by default in redis-py 8); the writers read it from their client."""

MAX_STATES = 4096
"""A key's possible states are capped (a long run of ambiguous writes): beyond it the check only says so."""


# -- the pure model --------------------------------------------------------------------------------------------------

State = Hashable
"""(value, has_ttl) for strings and counters, (frozenset of hash items, has_ttl) for hashes, or ABSENT."""


def op_set(value: str, ttl: bool) -> Callable[[State], State]:
    return lambda state: (value, ttl)


def op_expire() -> Callable[[State], State]:
    return lambda state: state if state == ABSENT else (state[0], True)


def op_persist() -> Callable[[State], State]:
    return lambda state: state if state == ABSENT else (state[0], False)


def op_incr(by: int = 1) -> Callable[[State], State]:
    def apply(state: State) -> State:
        if state == ABSENT:
            return (str(by), False)
        return (str(int(state[0]) + by), state[1])
    return apply


def op_hset(name: str, value: str) -> Callable[[State], State]:
    def apply(state: State) -> State:
        items = dict(state[0]) if state != ABSENT else {}
        items[name] = value
        return (frozenset(items.items()), state[1] if state != ABSENT else False)
    return apply


@dataclass
class KeyModel:
    """What one key may hold, from its write history (writes to it are issued one at a time)."""

    key: str
    kind: str
    possible: set = field(default_factory=lambda: {ABSENT})
    acked: State = ABSENT
    """The state right after the last acknowledged write (ABSENT before any)."""
    acked_count: int = 0
    ambiguous: list[str] = field(default_factory=list)
    """Descriptions of the writes after the last acknowledged one whose outcome is unknown."""
    ambiguous_total: int = 0
    overflow: bool = False
    anomalies: list[str] = field(default_factory=list)
    """Acknowledged writes whose reply no state the history allows could have given (INCR answering a value the
    counter never had, HSET creating a field it held, EXPIRE on a key that was gone): a write lost while the run
    went on, seen by the client at once."""

    def acknowledged(self, op: Callable[[State], State], description: str, exact: State | None = None,
                     consistent: Callable[[State], bool] | None = None) -> None:
        """A write the server confirmed: every possible state gets it (or, `exact`, the reply says the state).
        `consistent(state)` says whether the reply could come from the key being in that state before."""
        if consistent is not None and not any(consistent(s) for s in self.possible) and not self.overflow:
            self.anomalies.append(f"{description}: the reply says the key was not in any state its history allows "
                                  f"(last acknowledged {_show(self.acked)})")
        self.possible = {exact} if exact is not None else {op(s) for s in self.possible}
        self.acked = exact if exact is not None else op(self.acked)
        self.acked_count += 1
        self.ambiguous = []

    def unknown(self, op: Callable[[State], State], description: str, times: int = 1) -> None:
        """A write that may or may not have been applied (up to `times` times)."""
        grown = set(self.possible)
        frontier = set(self.possible)
        for _ in range(times):
            frontier = {op(s) for s in frontier}
            grown |= frontier
        if len(grown) > MAX_STATES:
            self.overflow = True
            grown = set(list(grown)[:MAX_STATES])
        self.possible = grown
        self.ambiguous.append(description)
        self.ambiguous_total += 1


@dataclass(frozen=True)
class Lost:
    """A key whose end state its history does not allow."""

    key: str
    kind: str
    observed: State
    last_acked: State
    ambiguous: tuple[str, ...]
    candidates: int
    anomalies: tuple[str, ...] = ()
    ends_allowed: bool = False

    def __str__(self) -> str:
        text = f"{self.key} ({self.kind}): "
        if self.anomalies:
            text += f"{len(self.anomalies)} replies no allowed state gives, first: {self.anomalies[0]}; "
        if self.ends_allowed:
            return text + f"ends with {_show(self.observed)}, an allowed state"
        return text + (f"holds {_show(self.observed)}; last acknowledged {_show(self.last_acked)}, "
                       f"{len(self.ambiguous)} ambiguous writes after it ({', '.join(self.ambiguous[-3:]) or 'none'}), "
                       f"{self.candidates} allowed states")


def _show(state: State) -> str:
    if state == ABSENT:
        return "nothing (absent)"
    value, ttl = state
    if isinstance(value, frozenset):
        value = dict(sorted(value))
    return f"{value!r}{' with a TTL' if ttl else ''}"


def check_key(model: KeyModel, observed: State) -> Lost | None:
    """None when the observed end state is one the key's history allows, else what was lost."""
    allowed = observed in model.possible or model.overflow
    if allowed and not model.anomalies:
        return None
    return Lost(model.key, model.kind, observed, model.acked, tuple(model.ambiguous), len(model.possible),
                tuple(model.anomalies), allowed)


@dataclass
class Report:
    keys: int
    writes: int
    acked: int
    ambiguous: int
    lost: list[Lost]
    errors: dict[str, int]
    """Exception class name -> count, over every ambiguous write."""

    def __str__(self) -> str:
        head = (f"{self.keys} keys, {self.writes} writes: {self.acked} acknowledged, {self.ambiguous} ambiguous "
                f"({', '.join(f'{k} {v}' for k, v in sorted(self.errors.items())) or 'no error'})")
        if not self.lost:
            return head + "; no write lost"
        return head + f"; {len(self.lost)} keys lost a write:\n  " + "\n  ".join(str(x) for x in self.lost[:10])


def reply_says(kind: str, description: str, op: Callable[[State], State], reply,
               times: int) -> tuple[State | None, Callable[[State], bool] | None]:
    """What an acknowledged write's reply says (pure): the exact state after it, when the reply gives it (INCR),
    and which states before it could have given that reply (redis-py may have sent the command `times` times)."""
    if kind == "counter":
        value = int(reply)

        def was(state: State) -> bool:
            for _ in range(times):
                state = op(state)
                if int(state[0]) == value:
                    return True
            return False
        return (str(value), False), was
    if kind == "hash" and reply == 1:
        field_name = description.split()[1]
        return None, lambda state: state == ABSENT or field_name not in dict(state[0])
    if description == "EXPIRE":
        return None, (lambda state: state != ABSENT) if reply else (lambda state: state == ABSENT)
    if description == "PERSIST" and reply:
        return None, lambda state: state != ABSENT and state[1]
    return None, None


# -- the writers -----------------------------------------------------------------------------------------------------

KINDS = ("string", "ttl-string", "counter", "hash")


def key_names(slots: list[int], per_slot: int, tag_for_slot: Callable[[int], str], prefix: str = "w") -> list[tuple[str, str]]:
    """(key, kind) for `per_slot` keys in each slot (hash tags place them), the kinds in turn."""
    out = []
    for slot in slots:
        tag = tag_for_slot(slot)
        for i in range(per_slot):
            out.append((f"{prefix}:{{{tag}}}:{i}", KINDS[i % len(KINDS)]))
    return out


class Writers:
    """`threads` stock RedisCluster clients overwriting `keys` until `stop()`, `max_seconds` or `max_writes` each.

    `startup` are loopback addresses of cluster nodes ("127.0.0.1:port"). `check()` reads every key back through a
    fresh cluster client and returns a `Report`.
    """

    def __init__(self, startup: list[str], password: str | None, keys: list[tuple[str, str]], threads: int = 3,
                 writes_per_s: float = 150.0, max_seconds: float = 300.0, max_writes: int = 200_000,
                 socket_timeout: float = 2.0, username: str | None = None, seed: int = 1) -> None:
        for address in startup:
            if address.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost", "::1", "[::1]"):
                raise ValueError(f"writers connect over loopback only, not {address}")
        self.startup, self.password, self.username = list(startup), password, username
        self.models = {k: KeyModel(k, kind) for k, kind in keys}
        self.threads = max(1, threads)
        self.pause = self.threads / writes_per_s if writes_per_s > 0 else 0.0
        self.max_seconds, self.max_writes, self.timeout = max_seconds, max_writes, socket_timeout
        self.errors: dict[str, int] = {}
        self.samples: dict[str, str] = {}
        """The first message of each exception class, for reports."""
        self._errors_lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._seed = seed
        self.writes = 0
        self.failures: list[str] = []
        self.retries = RETRIES

    def client(self):
        from redis.cluster import ClusterNode, RedisCluster
        nodes = [ClusterNode(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in self.startup]
        return RedisCluster(startup_nodes=nodes, password=self.password, username=self.username or None,
                            socket_timeout=self.timeout, socket_connect_timeout=self.timeout, decode_responses=True)

    def start(self) -> "Writers":
        names = sorted(self.models)
        for n in range(self.threads):
            mine = names[n::self.threads]
            t = threading.Thread(target=self._run, args=(mine, n), name=f"writer-{n}", daemon=True)
            self._workers.append(t)
        for t in self._workers:
            t.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout)
        alive = [t.name for t in self._workers if t.is_alive()]
        if alive:
            raise AssertionError(f"writer threads did not stop: {alive}")

    def __enter__(self) -> "Writers":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, keys: list[str], n: int) -> None:
        rng = random.Random(self._seed * 1000 + n)
        counters = {k: 0 for k in keys}
        deadline = time.monotonic() + self.max_seconds
        try:
            client = self.client()
            self.retries = max(self.retries, client.retry.get_retries())
        except Exception as e:  # a writer that cannot start is a failure of the test set-up
            self.failures.append(f"writer {n} could not connect: {e!r}")
            return
        written = 0
        try:
            while not self._stop.is_set() and time.monotonic() < deadline and written < self.max_writes and keys:
                key = rng.choice(keys)
                counters[key] += 1
                self._write(client, self.models[key], counters[key], rng)
                written += 1
                if self.pause:
                    time.sleep(self.pause * rng.uniform(0.5, 1.5))
        finally:
            with self._errors_lock:
                self.writes += written
            client.close()

    def _write(self, client, model: KeyModel, counter: int, rng: random.Random) -> None:
        key = model.key
        value = f"{key}#{counter}"
        if model.kind == "string":
            op, desc, send = op_set(value, False), f"SET {counter}", lambda: client.set(key, value)
        elif model.kind == "ttl-string":
            choice = rng.random()
            if choice < 0.5 or model.acked == ABSENT:
                op, desc, send = op_set(value, True), f"SET {counter} EX", lambda: client.set(key, value, ex=3600)
            elif choice < 0.75:
                op, desc, send = op_persist(), "PERSIST", lambda: client.persist(key)
            else:
                op, desc, send = op_expire(), "EXPIRE", lambda: client.expire(key, 3600)
        elif model.kind == "counter":
            op, desc, send = op_incr(1), "INCR", lambda: client.incr(key)
        else:
            name = f"f{counter % 4}"
            op, desc, send = op_hset(name, value), f"HSET {name} {counter}", lambda: client.hset(key, name, value)
        try:
            reply = send()
        except Exception as e:  # anything after the command may have been sent is ambiguous
            with self._errors_lock:
                self.errors[type(e).__name__] = self.errors.get(type(e).__name__, 0) + 1
                self.samples.setdefault(type(e).__name__, f"{desc}: {e}"[:300])
            model.unknown(op, f"{desc} ({type(e).__name__})", times=self.retries + 1 if model.kind == "counter" else 1)
            return
        model.acknowledged(op, f"{desc} answered {reply!r}", *reply_says(model.kind, desc, op, reply, self.retries + 1))

    def seen_lost(self) -> list[str]:
        """Lost writes the clients saw while the run went on (replies no allowed state gives), key by key."""
        return [f"{k}: {m.anomalies[0]}" + (f" (+{len(m.anomalies) - 1} more)" if len(m.anomalies) > 1 else "")
                for k, m in self.models.items() if m.anomalies]

    # -- the end state ---------------------------------------------------------------------------------------------

    def observe(self, client=None) -> dict[str, State]:
        """Every key's state read through a cluster client: value (GET or HGETALL) and whether it has a TTL."""
        own = client is None
        client = client or self.client()
        out: dict[str, State] = {}
        try:
            for key, model in self.models.items():
                if model.kind == "hash":
                    items = client.hgetall(key)
                    value = frozenset(items.items()) if items else None
                else:
                    value = client.get(key)
                if value is None:
                    out[key] = ABSENT
                    continue
                out[key] = (value, client.pttl(key) >= 0)
        finally:
            if own:
                client.close()
        return out

    def check(self, observed: dict[str, State] | None = None) -> Report:
        """The end state against every key's history."""
        observed = self.observe() if observed is None else observed
        lost = [x for x in (check_key(m, observed[k]) for k, m in self.models.items()) if x is not None]
        acked = sum(m.acked_count for m in self.models.values())
        ambiguous = sum(m.ambiguous_total for m in self.models.values())
        return Report(keys=len(self.models), writes=self.writes, acked=acked, ambiguous=ambiguous, lost=lost,
                      errors=dict(self.errors))
