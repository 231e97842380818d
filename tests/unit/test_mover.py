"""Pure parts of the mover: MIGRATEs cut by bytes (`rounds`), groups cut before a target the clients do not know."""

from __future__ import annotations

from runbook_lib.cluster.mover import next_group
from runbook_lib.cluster.plan import Move
from runbook_lib.cluster.rounds import chunk_by_bytes


def test_migrates_are_cut_by_bytes_and_a_big_value_goes_alone():
    keys = [b"a", b"b", b"big", b"c", b"d"]
    sizes = {b"a": 400, b"b": 400, b"big": 5000, b"c": 100, b"d": 100}
    assert chunk_by_bytes(keys, sizes, 1000) == [[b"a", b"b"], [b"big"], [b"c", b"d"]]


def test_without_a_limit_or_sizes_the_keys_go_together():
    assert chunk_by_bytes([b"a", b"b"], {}, None) == [[b"a", b"b"]]
    assert chunk_by_bytes([b"a", b"b"], {}, 10) == [[b"a", b"b"]], "unknown sizes count as nothing"
    assert chunk_by_bytes([], {}, 10) == []


def test_a_group_stops_before_a_second_target_the_clients_do_not_know():
    """With two new masters a group may hold moves to both: every target is asked, not only the first, and the group
    is cut before the first move towards an unknown one (redis-py#4015 fails an ASK to it)."""
    moves = [Move(1, "a", "new1"), Move(2, "a", "new1"), Move(3, "a", "new2"), Move(4, "a", "new2")]
    asked = []

    def knows(target: str) -> bool:
        asked.append(target)
        return target == "new1"

    assert next_group(moves, 4, knows) == moves[:2]
    assert "new2" in asked
    assert next_group(moves[2:], 4, knows) == moves[2:3], "towards an unknown target one slot goes alone"
    assert next_group(moves, 4, lambda t: True) == moves
    assert next_group(moves, 1, lambda t: True) == moves[:1]
