"""Repairs: BUSYKEY settled by DUMP comparison, a big key stopping the mover, a redis-cli reshard killed mid-slot."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest
import yaml

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import current_plan
from runbook_lib.cluster.topology import observe
from runbook_lib.config import Migration
from runbook_lib.sections import nodes
from runbook_lib.sections.validate import key_count
from tests.conftest import port_block, start_sandbox
from tests.integration.faults import assert_expanded, cli, fill_slot

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path, request):
    """A fresh 3+3 sandbox with the new master and its replica already joined (as 20_add_masters and 25_add_replicas
    leave them), and a run folder that passed 00_preflight."""
    port = request.param
    sb = start_sandbox(tmp_path / "sandbox", port, 2000)
    params = yaml.safe_load((sb.root / "params.yaml").read_text())
    params["probe"] = {"enabled": False}  # resume moves slots under the probe, whose keys would change the key counts
    (sb.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        run_dir = tmp_path / "run"
        pre = cli("run", "--params", str(sb.root / "params.yaml"), "--out", str(run_dir), "--only", "00_preflight")
        assert pre.returncode == 0, pre.stdout + pre.stderr
        journal = Journal(run_dir / "journal.jsonl")
        nodes.add_masters(f"127.0.0.1:{port}", sb.credentials(), [f"127.0.0.1:{port + 6}"], journal, apply=True)
        nodes.add_replicas(f"127.0.0.1:{port}", sb.credentials(), [(f"127.0.0.1:{port + 7}", f"127.0.0.1:{port + 6}")],
                           journal, apply=True)
        yield sb, port, run_dir
    finally:
        sb.down()


def open_slot(creds, source: str, target: str, slot: int) -> tuple[str, str]:
    topo = observe(source, creds)
    src, tgt = topo.by_address(source), topo.by_address(target)
    node_client(target, creds).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src.id)
    node_client(source, creds).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", tgt.id)
    return src.id, tgt.id


def on_target(creds, target: str, *command):
    pipe = node_client(target, creds).pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.execute_command(*command)
    return pipe.execute()[1]


@pytest.mark.parametrize("cluster", [port_block()], indirect=True, ids=["sandbox"])
def test_busykey_same_value_is_settled_and_different_value_stops(cluster):
    sb, port, run_dir = cluster
    creds = sb.credentials()
    source, target = f"127.0.0.1:{port}", f"127.0.0.1:{port + 6}"
    slot = 100
    same, differs = fill_slot(sb, source, slot, 2, prefix="busy")
    keys = key_count(observe(source, creds), creds)
    open_slot(creds, source, target, slot)
    src = node_client(source, creds)
    on_target(creds, target, "RESTORE", same, 0, src.dump(same))
    on_target(creds, target, "SET", differs, "another value")

    stopped = cli("resume", "--params", str(sb.root / "params.yaml"), "--run-dir", str(run_dir), "--slot", str(slot))
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert differs in stopped.stderr and "different values" in stopped.stderr and "both copies are kept" in stopped.stderr
    assert src.get(differs) == differs.encode() and on_target(creds, target, "GET", differs) == b"another value"
    assert {o["slot"] for o in observe(source, creds).open_slots()} == {slot}

    on_target(creds, target, "DEL", differs)
    resumed = cli("resume", "--params", str(sb.root / "params.yaml"), "--run-dir", str(run_dir), "--slot", str(slot))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert any(e["event"] == "busykey_same_value" and same in e["keys"] for e in events)
    assert any(e["event"] == "busykey_conflict" and e["key"] == differs for e in events)
    topo = observe(source, creds)
    assert topo.open_slots() == []
    assert key_count(topo, creds) == keys
    new_id = topo.by_address(target).id
    assert topo.reference.owners()[slot] == new_id
    assert on_target(creds, target, "GET", same) == same.encode()
    assert on_target(creds, target, "GET", differs) == differs.encode()


@pytest.mark.parametrize("cluster", [port_block()], indirect=True, ids=["sandbox"])
def test_big_key_stops_before_its_slot_unless_allowed(cluster):
    sb, port, run_dir = cluster
    creds = sb.credentials()
    seed, target = f"127.0.0.1:{port}", f"127.0.0.1:{port + 6}"
    plan = current_plan(observe(seed, creds), creds, [target], Migration(preset="fast"))
    slot = plan.batches[1][0].slot
    (big,) = fill_slot(sb, seed, slot, 1, prefix="big")
    topo = observe(seed, creds)
    owner = topo.nodes[topo.reference.owners()[slot]]
    node_client(owner.address, creds).set(big, b"x" * (11 * 1024 * 1024))
    keys = key_count(topo, creds)

    stopped = cli("resume", "--params", str(sb.root / "params.yaml"), "--run-dir", str(run_dir))
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert big in stopped.stderr and "over the big-key threshold" in stopped.stderr
    assert re.search(r"is 1[12]\.\d MB", stopped.stderr), stopped.stderr
    topo = observe(seed, creds)
    assert topo.open_slots() == [], "the big key's slot must not be opened"
    assert topo.reference.owners()[slot] == owner.id

    params = yaml.safe_load((sb.root / "params.yaml").read_text())
    params["bigkeys"] = {"allow": {big: 60000}}
    allowed = sb.root / "params-allow.yaml"
    allowed.write_text(yaml.safe_dump(params))
    resumed = cli("resume", "--params", str(allowed), "--run-dir", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    topo = observe(seed, creds)
    assert topo.reference.owners()[slot] == topo.by_address(target).id
    assert key_count(topo, creds) == keys
    assert len(node_client(target, creds).get(big)) == 11 * 1024 * 1024


@pytest.mark.parametrize("cluster", [port_block()], indirect=True, ids=["sandbox"])
def test_open_slot_left_by_killed_redis_cli_reshard_is_repaired(cluster, redis_cli):
    sb, port, run_dir = cluster
    creds = sb.credentials()
    seed, target = f"127.0.0.1:{port}", f"127.0.0.1:{port + 6}"
    fill_slot(sb, seed, 0, 3000, prefix="reshard")
    topo = observe(seed, creds)
    keys = key_count(topo, creds)
    baseline = json.loads((run_dir / "baseline.json").read_text())
    (run_dir / "baseline.json").write_text(json.dumps({**baseline, "keys": keys}))  # the test's own 3000 keys count
    env = {"REDISCLI_AUTH": creds.password, "PATH": "/usr/bin:/bin"}
    reshard = subprocess.Popen([redis_cli, "--cluster", "reshard", seed, "--cluster-from", topo.by_address(seed).id,
                                "--cluster-to", topo.by_address(target).id, "--cluster-slots", "50", "--cluster-yes",
                                "--cluster-pipeline", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tgt = node_client(target, creds)
    deadline = time.time() + 30
    while tgt.execute_command("CLUSTER", "COUNTKEYSINSLOT", 0) < 200 and time.time() < deadline:
        time.sleep(0.01)
    reshard.send_signal(signal.SIGKILL)
    reshard.wait()
    assert {o["slot"] for o in observe(seed, creds).open_slots()} == {0}
    assert cli("check", "--params", str(sb.root / "params.yaml")).returncode == 1

    on_target_before = tgt.execute_command("CLUSTER", "COUNTKEYSINSLOT", 0)
    left = cli("resume", "--params", str(sb.root / "params.yaml"), "--run-dir", str(run_dir))
    assert left.returncode == 1, left.stdout + left.stderr
    assert "slot 0 is open" in left.stdout and "left alone" in left.stdout, left.stdout
    assert f"{on_target_before} on 127.0.0.1:{port + 6}" in left.stdout, "the note says which keys sit where"
    assert "--slot 0" in left.stdout
    assert {o["slot"] for o in observe(seed, creds).open_slots()} == {0}, "another tool's slot is left as it was"
    assert tgt.execute_command("CLUSTER", "COUNTKEYSINSLOT", 0) == on_target_before

    resumed = cli("resume", "--params", str(sb.root / "params.yaml"), "--run-dir", str(run_dir), "--slot", "0")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "repaired slot 0: finish" in resumed.stdout
    done = cli("run", "--params", str(sb.root / "params.yaml"), "--out", str(run_dir), "--from", "60_validate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_expanded(sb, seed, keys)
