"""Progress fed by the journal: slots of the plan, keys, the pace and the clients' p99 against the budget."""

from __future__ import annotations

import io

from runbook_lib.cluster.journal import Journal
from runbook_lib.watch.journal_progress import JournalFollower, Progress, follow


def test_progress_counts_what_the_journal_says_moved(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    j.record("migration_start", moves=10, batches=1)
    j.record("keys_migrated", slots={"1": 40, "2": 2}, source="a", target="b")
    j.record("slots_assigned", slots=[1, 2], source="a", target="b")
    j.record("pace", action="ramp", slots_per_s=6.0, p99_ms=1.2, limit_ms=1.5, ratio=0.9, limit=1.1)
    state = Progress()
    for entry in JournalFollower(j.path).read():
        state.feed(entry)
    assert (state.total, state.slots, state.keys) == (10, 2, 42)
    assert state.postfix() == "keys 42, pace 6 slots/s (ramp), p99 1.20 ms of 1.50 ms budget"


def test_a_second_migration_start_restarts_the_count():
    p = Progress()
    for e in ({"event": "migration_start", "moves": 5}, {"event": "slots_assigned", "slots": [1]},
              {"event": "migration_start", "moves": 4}):
        p.feed(e)
    assert (p.total, p.slots) == (4, 0)


def test_the_follower_shows_only_what_was_appended_while_it_ran_and_skips_half_lines(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    j.record("migration_start", moves=99)
    out = io.StringIO()
    with follow(j.path, "migrating", file=out, interval_s=0.05) as f:
        j.record("migration_start", moves=3)
        j.record("slots_assigned", slots=[7, 8, 9], source="a", target="b")
        with open(j.path, "ab") as raw:
            raw.write(b'{"event": "slots_assi')
        f.poll()
        assert (f.state.total, f.state.slots) == (3, 3)
    assert "3/3" in out.getvalue()
