"""The open-slot repair decision (pure): finish whenever anything moved or the target owns the slot, else close."""

from runbook_lib.cluster.repair import SlotState, decide


def test_both_sides_open_finishes():
    d = decide(SlotState(7, migrating={"S": "T"}, importing={"T": "S"}, claims={"S"}), owner="S")
    assert (d.action, d.source, d.target) == ("finish", "S", "T")


def test_importing_only_with_nothing_moved_closes_the_target():
    d = decide(SlotState(7, importing={"T": "S"}, claims={"S"}, keys={"T": 0}), owner="S")
    assert (d.action, d.nodes) == ("close", ("T",))


def test_importing_only_with_keys_on_the_target_finishes_from_the_owner():
    d = decide(SlotState(7, importing={"T": "OLD"}, claims={"S2"}, keys={"T": 3}), owner="S2")
    assert (d.action, d.source, d.target) == ("finish", "S2", "T")


def test_migrating_only_when_target_already_owns_finishes():
    d = decide(SlotState(7, migrating={"S": "T"}, claims={"T", "S"}, keys={"S": 0}), owner="S")
    assert (d.action, d.source, d.target) == ("finish", "S", "T")


def test_migrating_only_with_nothing_on_the_target_closes_the_source():
    d = decide(SlotState(7, migrating={"S": "T"}, claims={"S"}, keys={"S": 5}), owner="S")
    assert (d.action, d.nodes) == ("close", ("S",))


def test_importing_node_that_owns_the_slot_just_clears_its_marker():
    d = decide(SlotState(7, importing={"T": "S"}, claims={"T"}), owner="T")
    assert (d.action, d.nodes) == ("close", ("T",))


def test_conflicting_markers_are_left_to_a_human():
    assert decide(SlotState(7, migrating={"S": "T"}, importing={"U": "S"}), owner="S").action == "manual"
    assert decide(SlotState(7, migrating={"S": "T", "R": "T"}), owner="S").action == "manual"
