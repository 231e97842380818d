"""What the MIGRATEs cost each source, from journal entries (pure)."""

from __future__ import annotations

import pytest

from runbook_lib.watch.migrate_cost import blocked_rate, migrate_costs


def journal() -> list[dict]:
    return [{"event": "slots_open", "ts": 100.0, "slots": [1, 2], "source": "a", "target": "d"},
            {"event": "keys_migrated", "ts": 101.0, "slots": {"1": 20}, "source": "a", "target": "d",
             "bytes": 2_000_000, "migrates": 4, "block_ms": 40.0, "max_block_ms": 15.0},
            {"event": "keys_migrated", "ts": 102.0, "slots": {"2": 10}, "source": "b", "target": "d",
             "bytes": 500_000, "migrates": 1, "block_ms": 100.0, "max_block_ms": 100.0},
            {"event": "keys_migrated", "ts": 103.0, "slots": {"1": 5}, "source": "a", "target": "d",
             "bytes": 1_000_000, "migrates": 2, "block_ms": 60.0, "max_block_ms": 35.0},
            {"event": "slots_assigned", "ts": 109.0, "slots": [1, 2], "source": "a", "target": "d"}]


def test_each_source_gets_its_migrates_bytes_block_time_and_duty_cycle():
    rows = {r["source"]: r for r in migrate_costs(journal(), {"a": "A:1", "b": "B:1"})}
    a, b = rows["A:1"], rows["B:1"]
    assert (a["drains"], a["migrates"], a["keys"], a["MB"]) == (2, 6, 25, 3.0)
    assert a["blocked_s"] == pytest.approx(0.1) and a["mean_migrate_ms"] == pytest.approx(100 / 6, abs=1e-3)
    assert a["max_round_ms"] == 35.0 and a["MB_per_s_blocked"] == pytest.approx(30.0)
    moving_s = 109.0 + 1.0 - 100.0  # first slot opened to the hand-over and its tail
    assert a["duty_pct"] == pytest.approx(100 * 0.1 / moving_s, abs=0.01)
    assert b["duty_pct"] == pytest.approx(100 * 0.1 / moving_s, abs=0.01) and b["MB_per_s_blocked"] == 5.0


def test_a_journal_without_block_times_gives_no_cost():
    old = [{k: v for k, v in e.items() if k not in ("block_ms", "max_block_ms", "migrates")} for e in journal()]
    assert migrate_costs(old) == [] and blocked_rate(old) is None


def test_the_blocked_rate_pools_every_source():
    cost = blocked_rate(journal())
    assert cost["bytes"] == 3_500_000 and cost["migrates"] == 7 and cost["blocked_s"] == pytest.approx(0.2)
    assert cost["bytes_per_blocked_s"] == pytest.approx(17.5e6) and cost["s_per_migrate"] == pytest.approx(0.2 / 7)
