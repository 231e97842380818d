"""The writers' model (pure): which end states a key's history of acknowledged and ambiguous writes allows."""

from __future__ import annotations

from tests.integration.writers import (
    ABSENT,
    KeyModel,
    Report,
    check_key,
    key_names,
    op_expire,
    op_hset,
    op_incr,
    op_persist,
    op_set,
    reply_says,
)


def test_the_last_acknowledged_value_is_allowed_and_an_older_one_is_a_lost_write():
    m = KeyModel("k", "string")
    m.acknowledged(op_set("v1", False), "SET 1")
    m.acknowledged(op_set("v2", False), "SET 2")
    assert check_key(m, ("v2", False)) is None
    lost = check_key(m, ("v1", False))
    assert lost is not None and lost.last_acked == ("v2", False) and lost.ambiguous == ()
    assert "last acknowledged 'v2'" in str(lost)
    assert check_key(m, ABSENT) is not None, "an acknowledged key that vanished is lost"


def test_ambiguous_writes_after_the_last_ack_are_allowed_but_not_before_it():
    m = KeyModel("k", "string")
    m.acknowledged(op_set("v1", False), "SET 1")
    m.unknown(op_set("v2", False), "SET 2 (TimeoutError)")
    assert check_key(m, ("v1", False)) is None
    assert check_key(m, ("v2", False)) is None
    m.acknowledged(op_set("v3", False), "SET 3")
    assert check_key(m, ("v3", False)) is None
    assert check_key(m, ("v2", False)) is not None, "an ambiguous write before the last ack must not win over it"
    m.unknown(op_set("v4", False), "SET 4 (ConnectionError)")
    m.unknown(op_set("v5", False), "SET 5 (ConnectionError)")
    assert {s for s in m.possible} == {("v3", False), ("v4", False), ("v5", False)}
    lost = check_key(m, ("v1", False))
    assert lost is not None and len(lost.ambiguous) == 2 and lost.candidates == 3


def test_a_key_never_acknowledged_may_be_absent_or_hold_an_ambiguous_value():
    m = KeyModel("k", "string")
    m.unknown(op_set("v1", False), "SET 1 (TimeoutError)")
    assert check_key(m, ABSENT) is None and check_key(m, ("v1", False)) is None
    assert check_key(m, ("v0", False)) is not None


def test_ttl_presence_follows_set_ex_expire_and_persist():
    m = KeyModel("k", "ttl-string")
    m.acknowledged(op_set("v1", True), "SET 1 EX")
    assert check_key(m, ("v1", True)) is None
    assert check_key(m, ("v1", False)) is not None, "the TTL was lost"
    m.acknowledged(op_persist(), "PERSIST")
    assert check_key(m, ("v1", False)) is None and check_key(m, ("v1", True)) is not None
    m.unknown(op_expire(), "EXPIRE (TimeoutError)")
    assert check_key(m, ("v1", True)) is None and check_key(m, ("v1", False)) is None
    m.acknowledged(op_set("v2", False), "SET 2")
    assert m.possible == {("v2", False)}


def test_an_ambiguous_set_then_an_acknowledged_expire_keeps_both_values_with_a_ttl():
    m = KeyModel("k", "ttl-string")
    m.acknowledged(op_set("v1", False), "SET 1")
    m.unknown(op_set("v2", False), "SET 2 (ConnectionError)")
    m.acknowledged(op_expire(), "EXPIRE")
    assert m.possible == {("v1", True), ("v2", True)}
    assert check_key(m, ("v2", False)) is not None


def test_counters_take_the_value_incr_answered_and_retries_may_apply_an_ambiguous_incr_several_times():
    m = KeyModel("c", "counter")
    m.acknowledged(op_incr(), "INCR", exact=("1", False))
    m.acknowledged(op_incr(), "INCR", exact=("3", False))  # a retry of a lost reply applied it twice: the reply says
    assert m.possible == {("3", False)}
    m.unknown(op_incr(), "INCR (TimeoutError)", times=3)
    assert {s[0] for s in m.possible} == {"3", "4", "5", "6"}
    assert check_key(m, ("7", False)) is not None and check_key(m, ("2", False)) is not None


def test_hash_fields_combine_acknowledged_and_ambiguous_writes():
    m = KeyModel("h", "hash")
    m.acknowledged(op_hset("f0", "a"), "HSET f0")
    m.unknown(op_hset("f1", "b"), "HSET f1 (ConnectionError)")
    m.acknowledged(op_hset("f0", "c"), "HSET f0")
    allowed = {frozenset({("f0", "c")}), frozenset({("f0", "c"), ("f1", "b")})}
    assert {s[0] for s in m.possible} == allowed
    assert check_key(m, (frozenset({("f0", "a"), ("f1", "b")}), False)) is not None, "the ack of f0=c was lost"


def test_the_report_names_lost_keys_and_counts():
    m = KeyModel("k", "string")
    m.acknowledged(op_set("v2", False), "SET 2")
    r = Report(keys=1, writes=1, acked=1, ambiguous=0, lost=[check_key(m, ABSENT)], errors={})
    assert "1 keys lost a write" in str(r) and "k (string): holds nothing (absent)" in str(r)
    assert "no write lost" in str(Report(keys=1, writes=1, acked=1, ambiguous=0, lost=[], errors={}))


def test_key_names_place_every_key_in_its_slot():
    from redis.crc import key_slot

    from tests.integration.faults import tag_for_slot
    keys = key_names([5, 16000], 4, tag_for_slot)
    assert [key_slot(k.encode()) for k, _ in keys] == [5] * 4 + [16000] * 4
    assert {kind for _, kind in keys} == {"string", "ttl-string", "counter", "hash"}


def _ack(m: KeyModel, op, desc: str, reply, times: int = 1) -> None:
    m.acknowledged(op, desc, *reply_says(m.kind, desc, op, reply, times))


def test_an_incr_answering_a_value_the_counter_never_had_is_a_lost_write_seen_at_once():
    m = KeyModel("c", "counter")
    for n in (1, 2, 3):
        _ack(m, op_incr(), "INCR", n)
    _ack(m, op_incr(), "INCR", 1)  # the counter started again from nothing: its 3 was lost
    lost = check_key(m, ("1", False))
    assert lost is not None and lost.ends_allowed and "INCR" in lost.anomalies[0]
    assert "replies no allowed state gives" in str(lost)


def test_an_incr_after_ambiguous_ones_or_applied_twice_by_a_retry_is_consistent():
    m = KeyModel("c", "counter")
    _ack(m, op_incr(), "INCR", 1)
    m.unknown(op_incr(), "INCR (ConnectionError)", times=2)
    _ack(m, op_incr(), "INCR", 4, times=2)  # 1 + (0..2 ambiguous) + (1..2 this one)
    assert m.anomalies == [] and check_key(m, ("4", False)) is None
    _ack(m, op_incr(), "INCR", 9, times=2)
    assert m.anomalies, "4 + at most 2 cannot answer 9"


def test_hset_creating_a_field_the_key_held_and_expire_on_a_vanished_key_are_lost_writes():
    h = KeyModel("h", "hash")
    _ack(h, op_hset("f1", "a"), "HSET f1 1", 1)
    _ack(h, op_hset("f1", "b"), "HSET f1 2", 0)
    assert h.anomalies == []
    _ack(h, op_hset("f1", "c"), "HSET f1 3", 1)  # the field was gone: the key was lost
    assert h.anomalies and check_key(h, (frozenset({("f1", "c")}), False)) is not None
    t = KeyModel("t", "ttl-string")
    _ack(t, op_set("v1", True), "SET 1 EX", True)
    _ack(t, op_expire(), "EXPIRE", True)
    assert t.anomalies == []
    _ack(t, op_expire(), "EXPIRE", False)
    assert t.anomalies and "EXPIRE" in t.anomalies[0]
    u = KeyModel("u", "ttl-string")
    u.unknown(op_set("v1", True), "SET 1 EX (TimeoutError)")
    _ack(u, op_expire(), "EXPIRE", False)
    assert u.anomalies == [], "a key whose only SET was ambiguous may be absent"
