"""The off-peak window on a real cluster: a migration started before its window opens moves nothing until it opens,
then moves; `max_batches` moves that many batches per call and a second call goes on; `outside: stop` stops it."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest

from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.topology import observe
from runbook_lib.config import load_params
from runbook_lib.exceptions import PaceStop
from runbook_lib.sections import migration, nodes
from runbook_lib.watch import watchers
from tests.conftest import LOOSE_GATES, port_block, start_sandbox
from tests.integration.faults import params_variant

pytestmark = [pytest.mark.integration, pytest.mark.exclusive]
"""Exclusive: it times a window opening seconds from now, so no other test may load the machine meanwhile."""
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
NEW = f"127.0.0.1:{PORT + 6}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    sb = start_sandbox(tmp_path_factory.mktemp("window") / "sandbox", PORT, 2000)
    creds = sb.credentials()
    nodes.add_masters(SEED, creds, [NEW], Journal(sb.root / "meet.jsonl"), apply=True)
    yield sb
    sb.down()


OPENS_IN_S = 25
"""The window opens this long after the run starts: longer than the run's start (watchers, baseline) takes on a loaded
machine, or the run would start inside it (CI saw that with 12 s and three workers on two cores)."""


def window_from_now(seconds: float, outside: str = "wait") -> dict:
    opens = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    closes = opens + dt.timedelta(minutes=30)
    return {"start": opens.strftime("%H:%M:%S"), "end": closes.strftime("%H:%M:%S"), "timezone": "UTC",
            "outside": outside}


def params_with(sb, name: str, window: dict):
    path = params_variant(sb, name, pace="fixed", slots_per_batch=64, allow_master_without_replica=True, client_learn_wait_s=0.0,
                          warmup_slot=False, window=window,
                          gates={**LOOSE_GATES, "memory_pct": 100.0, "replication_lag_ms": 60000.0, "baseline_s": 1.0})
    text = path.read_text().replace("enabled: true", "enabled: false")
    path.write_text(text)
    return load_params(path)


def new_master_slots(creds) -> int:
    topo = observe(SEED, creds)
    return len(topo.slots_by_master().get(topo.by_address(NEW).id, []))


def events(run_dir) -> list[dict]:
    path = run_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_run_started_outside_its_window_moves_nothing_then_moves_inside_it(sandbox, tmp_path, request):
    creds = sandbox.credentials()
    params = params_with(sandbox, "wait", window_from_now(OPENS_IN_S))
    run_dir = tmp_path / "run"
    request.addfinalizer(lambda: watchers.stop_all(run_dir))
    journal = Journal(run_dir / "journal.jsonl")
    done: dict = {}

    def migrate() -> None:
        try:
            done["result"] = migration.run(params, run_dir, observe(SEED, creds), journal, apply=True,
                                                         progress=False, max_batches=1)
        except BaseException as e:
            done["error"] = e
    worker = threading.Thread(target=migrate)
    worker.start()
    try:
        deadline = time.time() + OPENS_IN_S + 10
        while not any(e["event"] == "window_wait" for e in events(run_dir)) and time.time() < deadline:
            time.sleep(0.2)
        assert any(e["event"] == "window_wait" for e in events(run_dir)), "the wait was journaled"
        time.sleep(1.0)
        assert new_master_slots(creds) == 0, "nothing moved outside the window"
        assert observe(SEED, creds).open_slots() == [], "no slot is open while it waits"
    finally:
        worker.join(timeout=120)
    assert "error" not in done, done.get("error")
    the_plan, batches = done["result"].plan, done["result"].batches
    assert len(batches) == 1 and batches[0].slots == 64, "max_batches=1: one batch of 64 slots"
    kinds = [e["event"] for e in events(run_dir)]
    assert kinds.index("window_wait") < kinds.index("window_open") < kinds.index("slots_open"), kinds
    opened = next(e for e in events(run_dir) if e["event"] == "window_open")
    assert opened["waited_s"] >= 3
    assert new_master_slots(creds) == 64
    assert events(run_dir)[-1]["event"] == "migration_end" and events(run_dir)[-1]["remaining"] == len(
        the_plan.moves) - 64

    second = migration.run(params, run_dir, observe(SEED, creds), journal, apply=True, progress=False, max_batches=1)
    moved = new_master_slots(creds) - 64
    slowed = [e["failing"] for e in events(run_dir) if e["event"] == "gate" and e["action"] == "slow down"]
    assert len(second.batches) == 1 and second.batches[0].slots == moved > 0, (
        f"a second execution goes on where the first stopped (gates that slowed it: {slowed})")
    assert moved == 64 or slowed, "only a gate that failed on this busy machine may shrink the second batch"
    assert events(run_dir)[-1]["remaining"] == len(the_plan.moves) - 64 - moved


def test_outside_stop_stops_before_any_slot_moves(sandbox, tmp_path):
    creds = sandbox.credentials()
    before = new_master_slots(creds)
    params = params_with(sandbox, "stop", window_from_now(3600, outside="stop"))
    run_dir = tmp_path / "run"
    try:
        with pytest.raises(PaceStop, match="outside the off-peak window .* `runbook resume` continues"):
            migration.run(params, run_dir, observe(SEED, creds), Journal(run_dir / "journal.jsonl"), apply=True,
                                        progress=False)
    finally:
        watchers.stop_all(run_dir)
    assert new_master_slots(creds) == before and observe(SEED, creds).open_slots() == []
    assert "slots_open" not in [e["event"] for e in events(run_dir)]
    assert any(e["event"] == "window_stop" for e in events(run_dir))
