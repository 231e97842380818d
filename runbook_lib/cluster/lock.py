"""One run at a time per cluster: a lock key in the cluster itself, with a heartbeat, that every SRE machine sees.

The key (`runbook:lock`, with a TTL) holds the run id, host, operating-system user, pid and start time of the run that
holds it. A background thread refreshes it; a killed run stops refreshing, so its key expires on its own, and on the
same host a holder whose process is gone is recognised at once. Taking over a stale lock is a deliberate act
(`--take-over-lock`); a live lock is never taken over.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from runbook_lib.cluster.connection import LOCK_CLIENT_NAME, cluster_client, node_client
from runbook_lib.cluster.topology import Topology
from runbook_lib.config import Credentials
from runbook_lib.exceptions import BadInput, RunLocked

LOCK_KEY = "runbook:lock"
RUN_ID_ENV = "RUNBOOK_RUN_ID"
"""Set by `runbook run` for the kernels it starts: the id of the run that holds the lock (and seals the folder)."""
TTL_S = 60.0
HEARTBEAT_S = 5.0
STALE_AFTER_S = 20.0


def new_run_id() -> str:
    """A unique, sortable id for one run: UTC time and a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The kernel's start time of a process (clock ticks since boot), which tells a reused pid apart; "" if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


@dataclass(frozen=True)
class Holder:
    """Who holds the lock: the value stored in the lock key."""

    run_id: str
    command: str
    host: str
    user: str
    pid: int
    process_start: str
    boot_id: str
    started_utc: str
    run_dir: str

    @classmethod
    def me(cls, run_id: str, command: str, run_dir: str) -> "Holder":
        pid = os.getpid()
        return cls(run_id=run_id, command=command, host=platform.node(), user=getpass.getuser(), pid=pid,
                   process_start=_process_start(pid), boot_id=_boot_id(),
                   started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), run_dir=run_dir)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Holder":
        data = json.loads(text)
        return cls(**{k: data.get(k, "" if k != "pid" else 0) for k in cls.__dataclass_fields__})

    def gone_here(self) -> bool:
        """True when the holder ran on this host and its process no longer exists (or the host rebooted since)."""
        if self.host != platform.node():
            return False
        if self.boot_id and _boot_id() and self.boot_id != _boot_id():
            return True
        start = _process_start(self.pid)
        return not start or (bool(self.process_start) and start != self.process_start)

    def describe(self) -> str:
        return (f"run {self.run_id} ({self.command}) by {self.user}@{self.host}, pid {self.pid}, "
                f"since {self.started_utc}" + (f", run folder {self.run_dir}" if self.run_dir else ""))


@dataclass(frozen=True)
class LockState:
    """The lock as found: its holder and how long ago it was last refreshed."""

    holder: Holder
    raw: str
    heartbeat_age_s: float

    @property
    def stale_reason(self) -> str:
        """Why the holder is considered dead ("" while it looks alive)."""
        if self.holder.gone_here():
            return f"its process {self.holder.pid} is gone on this host"
        if self.heartbeat_age_s > STALE_AFTER_S:
            return f"its last heartbeat was {self.heartbeat_age_s:.0f} s ago (a live run refreshes every {HEARTBEAT_S:.0f} s)"
        return ""


def read_lock(client: RedisCluster) -> LockState | None:
    """The lock as it stands in the cluster, or None when no run holds it."""
    pipe = client.pipeline()
    pipe.get(LOCK_KEY)
    pipe.pttl(LOCK_KEY)
    raw, pttl = pipe.execute()
    if raw is None:
        return None
    age = max(0.0, TTL_S - pttl / 1000) if pttl and pttl > 0 else TTL_S
    try:
        holder = Holder.from_json(raw)
    except (ValueError, TypeError):
        holder = Holder(run_id="(unreadable)", command="", host="?", user="?", pid=0, process_start="", boot_id="",
                        started_utc="?", run_dir="")
    return LockState(holder=holder, raw=raw, heartbeat_age_s=age)


class RunLock:
    """The cluster's run lock for one run: acquire (or deliberately take over a stale one), heartbeat, release."""

    def __init__(self, seed: str, creds: Credentials, run_id: str, command: str, run_dir: str = "") -> None:
        self.seed = seed
        self.creds = creds
        self.holder = Holder.me(run_id, command, run_dir)
        self.taken_over: Holder | None = None
        self.lost: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: RedisCluster | None = None

    def _connect(self) -> RedisCluster:
        try:
            return cluster_client([self.seed], self.creds, name=LOCK_CLIENT_NAME)
        except (redis.RedisError, OSError) as e:
            raise BadInput(f"cannot take the run lock on the cluster at {self.seed} ({e}); check that the cluster "
                           "is up and the params' credentials") from None

    def acquire(self, take_over: bool = False) -> "RunLock":
        """Take the lock or raise RunLocked naming the holder; with `take_over`, replace a stale holder's lock."""
        self._client = self._connect()
        mine = self.holder.to_json()
        px = int(TTL_S * 1000)
        try:
            if not self._client.set(LOCK_KEY, mine, nx=True, px=px):
                state = read_lock(self._client)
                if state is not None:
                    self._take_over(state, mine, px, take_over)
                elif not self._client.set(LOCK_KEY, mine, nx=True, px=px):
                    raise RunLocked("another run took the cluster's run lock at this very moment; try again")
        except redis.ResponseError as e:
            self._close()
            raise BadInput(f"cannot take the run lock {LOCK_KEY!r} ({e}); the user needs SET, GET, PTTL and DEL on "
                           f"keys 'runbook:*' (see docs/acl.md)") from None
        except RunLocked:
            self._close()
            raise
        self._thread = threading.Thread(target=self._beat, name="runbook-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _take_over(self, state: LockState, mine: str, px: int, take_over: bool) -> None:
        reason = state.stale_reason
        if not reason:
            raise RunLocked(f"the cluster at {self.seed} is locked by {state.holder.describe()}; it is alive (last "
                            f"heartbeat {state.heartbeat_age_s:.0f} s ago). Wait for it to finish; nothing was changed")
        if not take_over:
            raise RunLocked(f"the cluster at {self.seed} is locked by {state.holder.describe()}, which looks dead: "
                            f"{reason}. Check what it left (`runbook check`), then run again with --take-over-lock "
                            "to take the lock over deliberately; nothing was changed")
        previous = self._client.set(LOCK_KEY, mine, xx=True, get=True, px=px)
        if previous != state.raw:
            if previous is None:
                self._client.delete(LOCK_KEY)
            else:
                self._client.set(LOCK_KEY, previous, xx=True, px=px)
            raise RunLocked("the run lock changed hands while taking it over; look again (`runbook check`) and retry")
        self.taken_over = state.holder

    def _beat(self) -> None:
        """Refresh the lock's TTL while it is ours; note in `lost` who took it if it is not any more."""
        mine, px = self.holder.to_json(), int(TTL_S * 1000)
        client = self._connect_quietly()
        try:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    client = client or self._connect_quietly()
                    if client is None:
                        continue
                    current = client.get(LOCK_KEY)
                    if current == mine:
                        client.set(LOCK_KEY, mine, xx=True, px=px)
                    elif current is None:
                        client.set(LOCK_KEY, mine, nx=True, px=px)
                    else:
                        state = read_lock(client)
                        if state is not None and state.raw != mine:
                            self.lost = state.holder
                            return
                except (redis.RedisError, OSError, AttributeError):
                    client = None
        finally:
            if client is not None:
                client.close()

    def _connect_quietly(self) -> RedisCluster | None:
        try:
            return cluster_client([self.seed], self.creds, name=LOCK_CLIENT_NAME)
        except (redis.RedisError, OSError):
            return None

    def release(self) -> bool:
        """Stop the heartbeat and delete the lock if it is still ours; returns whether it was."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 5)
        if self._client is None:
            return False
        try:
            if self._client.get(LOCK_KEY) != self.holder.to_json():
                return False
            self._client.delete(LOCK_KEY)
            return True
        except (redis.RedisError, OSError, AttributeError):
            return False
        finally:
            self._close()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def lock_keys(topo: Topology, creds: Credentials) -> int:
    """1 when the run lock's key exists (on its slot's owner), else 0: key counts leave the runbook's own key out."""
    owner = topo.reference.owners()[key_slot(LOCK_KEY.encode())]
    if owner is None or owner not in topo.nodes:
        return 0
    try:
        return int(node_client(topo.nodes[owner].address, creds, timeout=5.0).exists(LOCK_KEY))
    except (redis.RedisError, OSError):
        return 0
