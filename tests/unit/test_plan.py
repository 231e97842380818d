"""The planner: even targets, gifts only from old to new masters, batches, warm-up slot, plans that add up."""

import pytest

from runbook_lib.cluster.plan import (
    Move,
    Plan,
    even_targets,
    plan_expansion,
    verify_plan,
)
from runbook_lib.cluster.topology import SLOTS
from runbook_lib.exceptions import BadInput


def cluster(n: int) -> dict[str, set[int]]:
    """n masters holding contiguous, even ranges like `redis-cli --cluster create`."""
    share = SLOTS // n
    return {f"old{i}": set(range(i * share, SLOTS if i == n - 1 else (i + 1) * share)) for i in range(n)}


@pytest.mark.parametrize("old,new", [(3, 1), (3, 2), (6, 2)])
def test_even_split(old, new):
    owned = cluster(old)
    new_ids = [f"new{i}" for i in range(new)]
    plan = plan_expansion(owned, new_ids, slots_per_batch=100)
    counts = list(plan.after.values())
    assert sum(counts) == SLOTS
    assert max(counts) - min(counts) <= 1
    assert len(plan.after) == old + new
    for n in new_ids:
        assert plan.after[n] in (SLOTS // (old + new), SLOTS // (old + new) + 1)


def test_three_to_four_is_4096_each():
    plan = plan_expansion(cluster(3), ["new0"], slots_per_batch=256)
    assert set(plan.after.values()) == {4096}
    assert len(plan.moves) == 4096


def test_no_slot_moved_twice_and_only_old_to_new():
    owned = cluster(6)
    plan = plan_expansion(owned, ["new0", "new1"], slots_per_batch=64)
    slots = [m.slot for m in plan.moves]
    assert len(slots) == len(set(slots))
    assert all(m.source.startswith("old") and m.target.startswith("new") for m in plan.moves)
    assert all(m.slot in owned[m.source] for m in plan.moves)


def test_batches_respect_size_and_draw_on_every_source():
    plan = plan_expansion(cluster(3), ["new0"], slots_per_batch=100, warmup=False)
    assert all(len(b) <= 100 for b in plan.batches)
    assert sum(len(b) for b in plan.batches) == 4096
    assert {m.source for m in plan.batches[0]} == {"old0", "old1", "old2"}


def test_warmup_moves_the_emptiest_slot_alone_first():
    owned = cluster(3)
    keys = {s: 10 for s in range(SLOTS)}
    keys[5000] = 0
    plan = plan_expansion(owned, ["new0"], slots_per_batch=256, keys_per_slot=keys)
    assert plan.batches[0] == [Move(slot=5000, source="old0", target="new0")]
    assert 5000 not in [m.slot for b in plan.batches[1:] for m in b]


def test_donors_keep_their_lowest_slots_contiguous():
    plan = plan_expansion(cluster(3), ["new0"], slots_per_batch=256, warmup=False)
    given = {m.slot for m in plan.moves if m.source == "old0"}
    assert given == set(range(4096, 5461))


def test_partial_state_plans_only_the_remainder():
    owned = cluster(3)
    first = plan_expansion(owned, ["new0"], slots_per_batch=256)
    done = first.moves[:1000]
    for m in done:
        owned[m.source].discard(m.slot)
        owned.setdefault("new0", set()).add(m.slot)
    rest = plan_expansion(owned, ["new0"], slots_per_batch=256)
    assert len(rest.moves) == 4096 - 1000
    assert not {m.slot for m in rest.moves} & {m.slot for m in done}
    assert set(rest.after.values()) == {4096}


def test_balanced_cluster_plans_nothing():
    owned = cluster(4)
    owned["new0"] = owned.pop("old3")
    assert plan_expansion(owned, ["new0"], slots_per_batch=10).moves == []


def test_even_targets_give_the_remainder_to_old_masters():
    targets = even_targets({"a": 5461, "b": 5461, "c": 5462}, ["n", "m"])
    assert sum(targets.values()) == SLOTS
    assert targets["a"] == targets["b"] == targets["c"] == 3277


def test_uncovered_cluster_is_refused():
    owned = cluster(3)
    owned["old0"].discard(0)
    with pytest.raises(BadInput, match="16383 slots"):
        plan_expansion(owned, ["new0"], slots_per_batch=10)


def test_slot_claimed_twice_is_refused():
    owned = cluster(3)
    owned["old1"].add(0)
    with pytest.raises(BadInput, match="twice"):
        plan_expansion(owned, ["new0"], slots_per_batch=10)


def test_verify_plan_refuses_a_plan_that_does_not_add_up():
    owned = cluster(3)
    bad = Plan(batches=[[Move(1, "old0", "new0"), Move(1, "old0", "new0")]], before={}, after={}, targets={})
    with pytest.raises(BadInput, match="twice"):
        verify_plan(bad, owned)
    wrong_source = Plan(batches=[[Move(1, "old1", "new0")]], before={}, after={}, targets={})
    with pytest.raises(BadInput, match="does not own"):
        verify_plan(wrong_source, owned)


def test_plan_round_trips_through_json():
    plan = plan_expansion(cluster(3), ["new0"], slots_per_batch=512)
    again = Plan.from_json(plan.to_json())
    assert again.moves == plan.moves and again.after == plan.after
