"""The confirm rule every entry point shares: act only with apply: true and a confirm_cluster that names the cluster."""

import pytest

from runbook_lib.cluster.topology import NodeView, Topology, parse_cluster_nodes
from runbook_lib.config import load_params
from runbook_lib.exceptions import BadInput
from runbook_lib.run.confirm import confirm, names_cluster
from runbook_lib.run.notebook import Section

SEED = "127.0.0.1:7000"
SEED_ID = "3f2a9c41d07be5a86c1e2f3a4b5c6d7e8f901234"
NODES = f"""\
{SEED_ID} {SEED}@17000 myself,master - 0 0 1 connected 0-16383
8c0ffee0d07be5a86c1e2f3a4b5c6d7e8f901234 127.0.0.1:7003@17003 slave {SEED_ID} 0 1 1 connected
"""


def topology() -> Topology:
    return Topology(seed=SEED, views={SEED: NodeView(address=SEED, entries=parse_cluster_nodes(NODES))})


def params(tmp_path, apply: bool, confirm_cluster: str | None):
    text = f"""cluster:
  seed: "{SEED}"
  password_file: "pw"
new_masters:
  - address: "127.0.0.1:7006"
    replica: "127.0.0.1:7007"
apply: {str(apply).lower()}
"""
    if confirm_cluster is not None:
        text += f'confirm_cluster: "{confirm_cluster}"\n'
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return load_params(path)


@pytest.mark.parametrize("expected", [SEED, SEED_ID, SEED_ID[:8], SEED_ID[:20]])
def test_the_seed_address_or_eight_characters_of_its_id_name_the_cluster(expected):
    assert names_cluster(expected, SEED, SEED_ID)


@pytest.mark.parametrize("expected", ["", SEED_ID[:7], "127.0.0.1:7001", "127.0.0.1", SEED_ID[1:9],
                                      SEED_ID[:8].upper(), SEED_ID + "0", "8c0ffee0d07b", " " + SEED])
def test_anything_else_does_not(expected):
    assert not names_cluster(expected, SEED, SEED_ID)


def test_apply_false_is_a_dry_run_whatever_confirm_says(tmp_path):
    assert confirm(params(tmp_path, False, "127.0.0.1:9999"), topology()) is False
    assert confirm(params(tmp_path, False, None), topology()) is False


@pytest.mark.parametrize("expected", [SEED, SEED_ID[:8]])
def test_apply_true_with_a_matching_confirm_acts(tmp_path, expected):
    assert confirm(params(tmp_path, True, expected), topology()) is True


def test_apply_true_with_a_wrong_confirm_is_bad_input_naming_file_key_and_what_would_match(tmp_path):
    p = params(tmp_path, True, "127.0.0.1:7001")
    with pytest.raises(BadInput) as e:
        confirm(p, topology())
    message = str(e.value)
    assert str(p.path) in message and "confirm_cluster" in message and "'127.0.0.1:7001'" in message
    assert SEED in message and SEED_ID in message and "nothing was changed" in message
    assert e.value.exit_code == 2


def test_apply_true_without_confirm_is_refused_when_the_params_load(tmp_path):
    with pytest.raises(BadInput, match="confirm_cluster"):
        params(tmp_path, True, None)


class Guard:
    """The kernel session's guard (live input checks and the run lock, tested against real clusters in
    tests/integration/test_interactive.py), recording when a section would take them."""

    def __init__(self) -> None:
        self.guarded: list[str] = []

    def guard(self, params, topo, run, section) -> None:
        self.guarded.append(section)

    def release(self) -> None:
        pass


def test_the_notebook_section_uses_the_same_rule_and_guards_only_when_it_acts(tmp_path):
    guard = Guard()
    ok = Section("20_add_masters", params(tmp_path, True, SEED_ID[:8]), tmp_path / "run", session=guard)
    assert ok.confirm(topology()) is True
    assert guard.guarded == ["20_add_masters"]
    dry = Section("20_add_masters", params(tmp_path, False, ""), tmp_path / "run", session=guard)
    assert dry.confirm(topology()) is False
    wrong = Section("20_add_masters", params(tmp_path, True, SEED_ID[:7]), tmp_path / "run", session=guard)
    with pytest.raises(BadInput, match="does not name the cluster"):
        wrong.confirm(topology())
    assert guard.guarded == ["20_add_masters"], "a dry run and a refused confirm take no lock"
