"""Pure parts of the mover: MIGRATEs cut by bytes."""

from __future__ import annotations

from runbook_lib.cluster.mover import chunk_by_bytes


def test_migrates_are_cut_by_bytes_and_a_big_value_goes_alone():
    keys = [b"a", b"b", b"big", b"c", b"d"]
    sizes = {b"a": 400, b"b": 400, b"big": 5000, b"c": 100, b"d": 100}
    assert chunk_by_bytes(keys, sizes, 1000) == [[b"a", b"b"], [b"big"], [b"c", b"d"]]


def test_without_a_limit_or_sizes_the_keys_go_together():
    assert chunk_by_bytes([b"a", b"b"], {}, None) == [[b"a", b"b"]]
    assert chunk_by_bytes([b"a", b"b"], {}, 10) == [[b"a", b"b"]], "unknown sizes count as nothing"
    assert chunk_by_bytes([], {}, 10) == []
