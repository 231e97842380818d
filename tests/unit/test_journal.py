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


def test_a_close_is_open_until_its_outcome_and_a_rescue_until_it_is_done(tmp_path):
    """Intent before the command, outcome after it: a close that crashed (or whose STABLE failed) is still this run's
    open slot, and so is a rescue, as a move from the owner to the owner, while a move of the slot comes first."""
    j = Journal(tmp_path / "j.jsonl")
    j.record("slots_open", slots=[1, 2], source="a", target="b")
    j.record("slot_closing", slot=1, nodes=["a", "b"])
    j.record("slot_rescue", slot=7, holder="c", owner="a", keys=3)
    j.record("slot_rescue", slot=2, holder="c", owner="a", keys=1)
    opened = j.open_slots()
    assert set(opened) == {1, 2, 7}
    assert (opened[7]["source"], opened[7]["target"], opened[7]["holder"]) == ("a", "a", "c")
    assert (opened[2]["source"], opened[2]["target"]) == ("a", "b"), "the move of slot 2 goes on after its rescue"
    j.record("slot_rescued", slot=2, holder="c", owner="a", keys=1)
    j.record("slot_closed", slot=1, nodes=["a", "b"])
    j.record("slot_close_kept", slot=2, closed=["a"], kept=["b"])
    assert set(j.open_slots()) == {2, 7}
    j.record("slot_rescued", slot=7, holder="c", owner="a", keys=3)
    assert set(j.open_slots()) == {2}
