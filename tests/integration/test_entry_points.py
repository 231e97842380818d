"""Safeguards on every entry point: `runbook resume` and `runbook rollback` are dry runs with apply: false, refuse a
params file that names another cluster, leave another tool's open slot alone unless it is named, stop the watchers an
interrupted run left behind; `runbook run --from` continues the earlier run's folder instead of starting a new one.

One sandbox for the module; the tests run in order and each leaves the cluster as the next one expects."""

from __future__ import annotations

import json

import pytest
import yaml

from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.lock import read_lock
from runbook_lib.cluster.topology import observe, parse_ranges
from runbook_lib.config import load_params
from runbook_lib.run.report import available
from runbook_lib.watch import detached, watchers
from runbook_lib.watch.sampler import Sampler
from tests.conftest import cluster_layout, module_sandbox, port_block
from tests.integration.faults import assert_expanded, assert_original, cli, fill_slot, params_variant

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
PORTS = list(range(PORT, PORT + 8))


sandbox = module_sandbox(PORT, 2000)


def variant(sb, name: str, **top) -> str:
    """The sandbox's (loosened) params with top-level keys changed (apply, confirm_cluster, report)."""
    path = params_variant(sb, name, warmup_slot=False)
    data = yaml.safe_load(path.read_text())
    data.update(top)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def params(sandbox):
    return variant(sandbox, "acting")


@pytest.fixture(scope="module")
def dry(sandbox):
    return variant(sandbox, "dry", apply=False)


@pytest.fixture(scope="module")
def wrong(sandbox):
    """apply: true, but confirm_cluster names another node of the same cluster: a realistic slip."""
    return variant(sandbox, "wrong", confirm_cluster=f"127.0.0.1:{PORT + 1}")


@pytest.fixture(scope="module")
def first_run(params):
    """The folder of a run that passed 00_preflight before the expansion: a new one under report.dir."""
    report_dir = load_params(params).report_dir
    pre = cli("run", "--params", params, "--only", "00_preflight")
    assert pre.returncode == 0, pre.stdout + pre.stderr
    (folder,) = [p for p in report_dir.iterdir() if p.is_dir()]
    assert f"run folder: {folder}" in pre.stdout
    assert json.loads((folder / "baseline.json").read_text())["pre_expansion"]
    return folder


def events(run_dir) -> list[dict]:
    path = run_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def no_lock(sandbox) -> bool:
    client = cluster_client([SEED], sandbox.credentials())
    try:
        return read_lock(client) is None
    finally:
        client.close()


def test_dry_runs_change_nothing_and_say_what_they_would_do(sandbox, dry, params, first_run):
    creds = sandbox.credentials()
    before = cluster_layout(PORTS, creds)

    resumed = cli("resume", "--params", dry)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "DRY RUN (apply: false in params-dry.yaml)" in resumed.stdout
    assert f"would resume the expansion of the run in {first_run}" in resumed.stdout
    assert "expansion: would move 4096 slots in" in resumed.stdout
    assert f"127.0.0.1:{PORT + 6}" in resumed.stdout, "the plan names the new master"

    back = cli("rollback", "--params", dry)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "DRY RUN (apply: false in params-dry.yaml)" in back.stdout
    assert f"would roll back to the layout recorded in {first_run / 'baseline.json'}" in back.stdout
    assert "no slot to move back" in back.stdout

    forced = cli("resume", "--params", params, "--dry-run")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "DRY RUN (--dry-run)" in forced.stdout and "would move 4096 slots" in forced.stdout

    assert cluster_layout(PORTS, creds) == before
    assert no_lock(sandbox), "a dry run does not take the run lock"
    assert not (first_run / "probe").exists() and not (first_run / "metrics").exists(), "a dry run starts no watcher"
    assert [e for e in events(first_run) if e["event"] != "replication"] == [], "a dry run journals no change"


def test_a_confirm_cluster_naming_another_cluster_exits_2_and_changes_nothing(sandbox, wrong, first_run):
    creds = sandbox.credentials()
    before = cluster_layout(PORTS, creds)
    for command in ("resume", "rollback"):
        proc = cli(command, "--params", wrong)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "confirm_cluster" in proc.stderr and f"'127.0.0.1:{PORT + 1}' does not name the cluster at {SEED}" \
            in proc.stderr and "nothing was changed" in proc.stderr, proc.stderr
    assert cluster_layout(PORTS, creds) == before
    assert no_lock(sandbox)
    assert not (first_run / "probe").exists() and not (first_run / "metrics").exists()


def test_run_from_without_an_earlier_run_folder_is_refused(sandbox, tmp_path):
    empty = tmp_path / "no-runs"
    empty.mkdir()
    proc = cli("run", "--params", variant(sandbox, "elsewhere", report={"dir": str(empty)}), "--from", "30_plan")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"no run folder under {empty} has a baseline.json taken before the expansion" in proc.stderr
    assert list(empty.iterdir()) == [], "no run folder was created"


def test_run_from_continues_the_earlier_run_folder(sandbox, params, first_run):
    for name in [n for n in available() if "20_add_masters" <= n < "30_plan"]:
        joined = cli("run", "--params", params, "--only", name, "--out", str(first_run))
        assert joined.returncode == 0, joined.stdout + joined.stderr
    report_dir = first_run.parent
    folders = set(report_dir.iterdir())
    baseline = (first_run / "baseline.json").read_bytes()

    # the probe's zero-downtime verdict is proven elsewhere; here it would only add its noise on a busy machine
    quiet = variant(sandbox, "no-probe", probe={"enabled": False})
    rest = cli("run", "--params", quiet, "--from", "30_plan")
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert f"run folder: {first_run} (continued from 30_plan on: the newest run folder under {report_dir}" \
        in rest.stdout
    assert set(report_dir.iterdir()) == folders, "no new run folder"
    assert (first_run / "baseline.json").read_bytes() == baseline, "the before-picture is the one from 00_preflight"
    journaled = {e["event"] for e in events(first_run)}
    assert {"node_meet", "migration_start", "migration_end"} <= journaled, "one journal for the whole run"
    assert json.loads((first_run / "results" / "60_validate.json").read_text())["status"] != "fail"
    assert_expanded(sandbox, SEED, json.loads(baseline)["keys"])
    assert watchers.running(first_run) == {}


def test_dry_run_rollback_after_the_expansion_says_what_it_would_move(sandbox, dry, first_run):
    creds = sandbox.credentials()
    before = cluster_layout(PORTS, creds)
    back = cli("rollback", "--params", dry)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "would move back 4096 slots in" in back.stdout
    assert f"would: remove 127.0.0.1:{PORT + 6}" in back.stdout and "after the slots are back" in back.stdout
    resumed = cli("resume", "--params", dry)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "expansion: nothing left to move" in resumed.stdout
    assert cluster_layout(PORTS, creds) == before
    assert no_lock(sandbox)


def test_another_tools_open_slot_is_left_alone_unless_named(sandbox, params, first_run):
    creds = sandbox.credentials()
    topo = observe(SEED, creds)
    owner, other = topo.by_address(SEED), topo.by_address(f"127.0.0.1:{PORT + 1}")
    slot = min(topo.slots_by_master()[owner.id])
    keys = fill_slot(sandbox, SEED, slot, 3, prefix="foreign")
    node_client(other.address, creds).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", owner.id)
    node_client(owner.address, creds).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", other.id)
    stale = Sampler(SEED, creds, first_run)  # as if the runner that started it had been killed
    stale.start()
    (stale_pid,) = stale.alive()
    before = cluster_layout(PORTS, creds)

    left = cli("resume", "--params", params)
    assert left.returncode == 1, left.stdout + left.stderr
    assert f"stopped before moving any slot: slot {slot} still open" in left.stdout
    assert f"--slot {slot}" in left.stdout
    assert f"stopped the metrics sampler (pid {stale_pid}), still running from the interrupted run" in left.stdout
    assert not detached.is_running(stale_pid, "runbook_lib.watch.sampler")
    assert "watching:" not in left.stdout, "no slot moves, so no watcher starts"
    assert cluster_layout(PORTS, creds) == before, "the foreign open slot was touched"
    assert not [e for e in events(first_run) if e["event"] == "slot_repair" and e["slot"] == slot]

    fixed = cli("resume", "--params", params, "--slot", str(slot))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"repaired slot {slot}: " in fixed.stdout, "nothing moved under the markers: the engine closes it"
    assert "expansion: nothing left to move" in fixed.stdout
    topo = observe(SEED, creds)
    assert topo.open_slots() == []
    holder = topo.nodes[topo.reference.owners()[slot]].address
    assert all(node_client(holder, creds).get(k) == k.encode() for k in keys)
    assert watchers.running(first_run) == {}, "resume stops the watchers it started"
    assert no_lock(sandbox)


def test_rollback_runs_watched_and_returns_the_recorded_layout(sandbox, params, first_run):
    baseline = json.loads((first_run / "baseline.json").read_text())
    gates_before = len([e for e in events(first_run) if e["event"] == "gate"])
    owners = observe(SEED, sandbox.credentials()).reference.owners()
    moves = sum(1 for m in baseline["masters"] for s in parse_ranges(m["slots"]) if owners[s] != m["id"])
    assert moves >= 4096
    stale = Sampler(SEED, sandbox.credentials(), first_run)
    stale.start()
    (stale_pid,) = stale.alive()
    back = cli("rollback", "--params", params)
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"stopped the metrics sampler (pid {stale_pid}), still running from the interrupted run" in back.stdout
    assert not detached.is_running(stale_pid, "runbook_lib.watch.sampler")
    assert "watching: sampler started, probe started" in back.stdout
    assert "every batch gated by the throttle" in back.stdout
    assert f"moved {moves} slots back to their owners" in back.stdout
    after = events(first_run)
    start = max(i for i, e in enumerate(after) if e["event"] == "rollback_start")
    assert len([e for e in after if e["event"] == "gate"]) > gates_before
    assert [e for e in after[start:] if e["event"] == "gate"], "the rollback's batches went through the gates"
    assert_original(sandbox, SEED, baseline, baseline["keys"] + 3)
    assert watchers.running(first_run) == {}
    assert no_lock(sandbox)
