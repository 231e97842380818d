"""The journal: durable JSON lines, open slots derived from it, torn last lines skipped, failpoints inert by default."""

import json

from runbook_lib.cluster.journal import Journal, failpoint


def test_records_are_appended_and_read_back(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    j.record("slot_open", slot=1, source="a", target="b")
    j.record("slots_open", slots=[2, 3, 4], source="a", target="b")
    j.record("slot_assigned", slot=1, source="a", target="b", keys=3)
    j.record("slots_assigned", slots=[2, 3], source="a", target="b")
    assert [e["event"] for e in j.entries()] == ["slot_open", "slots_open", "slot_assigned", "slots_assigned"]
    assert set(j.open_slots()) == {4}
    assert j.last("slot_open", "slots_open")["slots"] == [2, 3, 4]


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps({"event": "slot_open", "slot": 9}) + "\n" + '{"event": "slot_ass')
    assert [e["event"] for e in Journal(path).entries()] == ["slot_open"]
    assert set(Journal(path).open_slots()) == {9}


def test_journal_file_is_owner_only(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    j.record("x")
    assert (tmp_path / "j.jsonl").stat().st_mode & 0o077 == 0


def test_failpoint_does_nothing_unless_named(monkeypatch):
    monkeypatch.delenv("RUNBOOK_FAILPOINT", raising=False)
    failpoint("drain.migrated")
    monkeypatch.setenv("RUNBOOK_FAILPOINT", "somewhere_else")
    failpoint("drain.migrated")


def test_read_from_gives_each_complete_entry_once_and_waits_for_a_torn_line(tmp_path):
    from runbook_lib.cluster.journal import Journal
    j = Journal(tmp_path / "journal.jsonl")
    j.record("a")
    first, at = j.read_from(0)
    assert [e["event"] for e in first] == ["a"]
    with open(j.path, "ab") as raw:
        raw.write(b'{"event": "b"')
    assert j.read_from(at) == ([], at), "a line still being written waits"
    with open(j.path, "ab") as raw:
        raw.write(b"}\n")
    second, _ = j.read_from(at)
    assert [e["event"] for e in second] == ["b"]
