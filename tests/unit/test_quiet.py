"""Quiet spells: every worker waits at the barrier, no group of slots runs during a spell, and it is journaled."""

from __future__ import annotations

import threading
import time

from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.quiet import QuietSpells
from runbook_lib.watch.timeline import quiet_windows


def _run_workers(spells: QuietSpells, groups: list[int], group_s: float) -> list[tuple[float, float]]:
    """Workers that each run `groups[i]` groups of `group_s`, passing the barrier before each; their busy spans."""
    busy: list[tuple[float, float]] = []
    lock = threading.Lock()
    spells.start_batch(len(groups))

    def worker(n: int) -> None:
        try:
            for _ in range(n):
                spells.before_group()
                start = time.time()
                time.sleep(group_s)
                with lock:
                    busy.append((start, time.time()))
        finally:
            spells.worker_done()
    threads = [threading.Thread(target=worker, args=(n,)) for n in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a worker is stuck at the barrier"
    return busy


def test_no_group_runs_during_a_spell_and_each_spell_is_journaled(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    spells = QuietSpells(journal, every_s=0.15, quiet_s=0.1, tail_s=0.02)
    busy = _run_workers(spells, [40, 25, 5], group_s=0.02)
    entries = list(journal.entries())
    quiet = quiet_windows(entries)
    assert len(quiet) == spells.spells >= 2
    assert all(end - start >= 0.1 for start, end in quiet)
    for start, end in quiet:
        assert not [b for b in busy if b[0] < end and b[1] > start], "a group ran during a quiet spell"
        assert min(abs(start - b[1]) for b in busy) >= 0.02, "the spell starts after the hand-over tail"
    starts = [e for e in entries if e["event"] == "quiet_start"]
    assert all(e["drained_s"] >= 0 and e["tail_s"] == 0.02 for e in starts)
    assert spells.spent_s >= sum(end - start for start, end in quiet)


def test_switched_off_there_is_no_spell(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    spells = QuietSpells(journal, every_s=0.0, quiet_s=2.0)
    _run_workers(spells, [5, 5], group_s=0.01)
    assert spells.spells == 0 and quiet_windows(journal.entries()) == []


def test_a_worker_that_finished_is_not_waited_for(tmp_path):
    spells = QuietSpells(Journal(tmp_path / "journal.jsonl"), every_s=0.05, quiet_s=0.05, tail_s=0.0)
    started = time.time()
    _run_workers(spells, [1, 20], group_s=0.01)
    assert spells.spells >= 1 and time.time() - started < 10


def test_an_unended_spell_lasts_until_now():
    entries = [{"event": "quiet_start", "ts": 10.0}]
    assert quiet_windows(entries, now=13.0) == [(10.0, 13.0)]


def test_the_first_spell_comes_soon_so_the_governor_has_a_control_early(tmp_path):
    from runbook_lib.cluster.quiet import FIRST_SPELL_S
    spells = QuietSpells(Journal(tmp_path / "journal.jsonl"), every_s=20.0, quiet_s=2.0, now=lambda: 100.0)
    spells.start_batch(2)
    spells.before_group()
    assert spells.spells == 0, "not due yet"
    assert spells._due == 100.0 + FIRST_SPELL_S < 100.0 + spells.every_s
