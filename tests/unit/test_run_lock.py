"""The run lock's holder record: who holds it, and when a holder counts as dead (pure parts, no Redis)."""

from __future__ import annotations

import os
import subprocess
import sys

from runbook_lib.cluster.lock import (
    HEARTBEAT_S,
    STALE_AFTER_S,
    Holder,
    LockState,
    new_run_id,
)


def test_holder_round_trips_and_describes_itself():
    me = Holder.me("run-1", "runbook run", "/reports/x")
    assert Holder.from_json(me.to_json()) == me
    assert me.pid == os.getpid() and me.process_start
    text = me.describe()
    assert "run run-1 (runbook run)" in text and f"pid {me.pid}" in text and f"since {me.started_utc}" in text


def test_a_live_holder_is_not_stale_a_dead_one_is():
    me = Holder.me("run-1", "runbook run", "")
    assert LockState(me, me.to_json(), heartbeat_age_s=HEARTBEAT_S).stale_reason == ""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = Holder(**{**me.__dict__, "pid": child.pid})
    assert "gone on this host" in LockState(dead, dead.to_json(), 0.0).stale_reason
    reused = Holder(**{**me.__dict__, "process_start": "1"})
    assert reused.gone_here(), "same pid, other start time: the pid was reused"
    elsewhere = Holder(**{**me.__dict__, "host": "another-host", "pid": child.pid})
    assert LockState(elsewhere, "", STALE_AFTER_S - 1).stale_reason == ""
    assert "last heartbeat" in LockState(elsewhere, "", STALE_AFTER_S + 1).stale_reason


def test_run_ids_are_unique():
    assert len({new_run_id() for _ in range(50)}) == 50
