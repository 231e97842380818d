"""The slot state machine (pure): one next transition for every state a move, a crash or a failover leaves."""

from runbook_lib.cluster.slots import (
    CLOSE,
    DONE,
    DRAIN,
    HANDOVER,
    MANUAL,
    OPEN,
    RESCUE,
    Shards,
    SlotState,
    intent_from_markers,
    next_step,
    repair_step,
)


def state(owner="S", migrating=None, importing=None, **keys):
    return SlotState(7, owner, migrating or {}, importing or {}, {"S": 0, "T": 0, "X": 0, **keys})


def test_a_fresh_slot_is_opened_first():
    assert next_step(state(S=10), "S", "T").kind == OPEN


def test_an_open_slot_with_keys_on_the_source_is_drained():
    assert next_step(state(migrating={"S": "T"}, importing={"T": "S"}, S=3, T=7), "S", "T").kind == DRAIN


def test_an_open_slot_whose_source_is_empty_is_handed_over():
    step = next_step(state(migrating={"S": "T"}, importing={"T": "S"}, T=10), "S", "T")
    assert (step.kind, step.source, step.target) == (HANDOVER, "S", "T")


def test_a_slot_owned_by_the_target_with_all_keys_there_is_done():
    assert next_step(state(owner="T", T=10), "S", "T").kind == DONE


def test_the_target_owning_the_slot_with_markers_left_clears_them_by_handover():
    assert next_step(state(owner="T", migrating={"S": "T"}, T=10), "S", "T").kind == HANDOVER


def test_never_hand_over_while_the_source_holds_keys_even_when_the_target_owns_it():
    step = next_step(state(owner="T", migrating={"S": "T"}, S=2, T=8), "S", "T")
    assert step.kind == DRAIN
    assert next_step(state(owner="T", S=2, T=8), "S", "T").kind == MANUAL


def test_target_failed_over_the_promoted_replica_is_reopened_and_keeps_its_keys():
    """Markers are not replicated: T2 took over from T with the moved keys and no IMPORTING marker; the source still
    migrates towards the dead T. The slot is re-opened towards T2, never closed."""
    s = SlotState(7, "S", {"S": "T"}, {}, {"S": 4, "T2": 6})
    assert next_step(s, "S", "T2").kind == OPEN
    opened = s.opened("S", "T2")
    assert opened.importing == {"T2": "S"} and opened.migrating == {"S": "T2"}
    assert next_step(opened, "S", "T2").kind == DRAIN
    assert repair_step(s, "S", "T2").kind == OPEN


def test_source_failed_over_the_promoted_replica_is_opened_again_as_source():
    s = SlotState(7, "S2", {}, {"T": "S"}, {"S2": 5, "T": 5})
    step = next_step(s, "S2", "T")
    assert step.kind == OPEN
    assert next_step(s.opened("S2", "T"), "S2", "T").kind == DRAIN


def test_stranded_keys_on_a_master_that_does_not_own_the_slot_are_rescued_first():
    step = next_step(state(migrating={"S": "T"}, importing={"T": "S"}, T=3, X=2), "S", "T")
    assert (step.kind, step.source, step.target) == (RESCUE, "X", "S")
    alone = SlotState(7, "S", {}, {}, {"S": 5, "X": 2})
    assert next_step(alone, "S", "S").kind == RESCUE
    assert next_step(alone.rescued("X"), "S", "S").kind == DONE


def test_repair_closes_only_when_nothing_moved_and_no_ask_was_sent():
    assert repair_step(state(importing={"T": "S"}, S=10), "S", "T").kind == CLOSE
    both = repair_step(state(migrating={"S": "T"}, importing={"T": "S"}, S=10), "S", "T")
    assert both.kind == DRAIN, "a MIGRATING source may have sent an ASK still on its way: finish, never close"
    assert repair_step(state(migrating={"S": "T"}, S=8, T=2), "S", "T").kind == OPEN
    assert repair_step(state(importing={"T": "S"}, S=8, T=2), "S", "T").kind == OPEN


def test_markers_on_a_third_node_and_a_missing_owner_stop_for_a_human():
    assert next_step(state(importing={"X": "S", "T": "S"}, migrating={"S": "T"}, S=1), "S", "T").kind == MANUAL
    assert next_step(state(owner=None), "S", "T").kind == MANUAL
    assert next_step(state(owner="X", X=3), "S", "T").kind == MANUAL


def test_the_intent_of_an_open_slot_follows_failovers():
    shard = {"S": "S", "T": "T2", "T2": "T2"}.get
    assert intent_from_markers(SlotState(7, "S", {"S": "T"}, {}, {}), shard) == ("S", "T2")
    assert intent_from_markers(SlotState(7, "S", {"S": "T"}, {"T2": "S"}, {}), shard) == ("S", "T2")
    assert intent_from_markers(SlotState(7, "S", {"S": "X"}, {"T2": "S"}, {}), {"X": "X", **{"S": "S", "T2": "T2"}}.get) is None


def test_shards_map_a_dead_master_to_its_promoted_replica_and_back():
    shards = Shards([("T2", "T")])
    assert shards.current("T", {"S", "T2"}, {}) == "T2"
    assert shards.current("T", {"S", "T2"}, {"T": "T2"}) == "T2"
    assert shards.current("S", {"S", "T2"}, {}) == "S"
    assert shards.current("T", {"S"}, {}) is None
    assert shards.learn({"T": "T2", "T2": "T"}) == [("T", "T2")]


def test_a_target_that_missed_the_new_sources_claim_is_told_the_owner_when_reopened():
    s = SlotState(7, "S2", {"S2": "T"}, {"T": "S2"}, {"S2": 5, "T": 5}, {"S2": "S2", "T": None})
    assert next_step(s, "S2", "T").kind == OPEN
    assert next_step(s.opened("S2", "T"), "S2", "T").kind == DRAIN


def test_a_slot_counted_empty_before_it_was_opened_is_counted_again_before_its_handover():
    """Clients may write keys of the slot to the source until MIGRATING is set: a count from before the OPEN must
    never let the slot be handed over (the source would refuse, or drop the keys once it learns the new owner)."""
    fresh = SlotState(7, "S", {}, {}, {"S": 0, "T": 0})
    opened = fresh.opened("S", "T")
    assert next_step(opened, "S", "T").kind == DRAIN
    assert next_step(opened.drained("S", "T", 0, 0), "S", "T").kind == HANDOVER
