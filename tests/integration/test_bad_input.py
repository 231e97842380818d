"""Bad input is refused before anything changes, with a message naming the problem (and the params file and key),
exit code 2 (1 for an unhealthy cluster), and every node's CLUSTER NODES the same before and after; a second run
while one holds the cluster is refused, and a dead run's lock is taken over only deliberately."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.lock import RunLock, read_lock
from runbook_lib.cluster.topology import observe
from runbook_lib.sandbox import SandboxLayout, redis_binary
from runbook_lib.sections.validate import key_count
from tests.conftest import cluster_layout, module_sandbox, port_block

pytestmark = pytest.mark.integration
PORT = port_block()
LAYOUT = SandboxLayout(port=PORT)
STANDALONE = port_block(1)
NOWHERE = port_block(1)


sandbox = module_sandbox(PORT, 2000)


@pytest.fixture(scope="module")
def standalone(sandbox):
    """A plain redis-server (cluster mode off) with the sandbox's password."""
    folder = sandbox.root / "standalone"
    folder.mkdir()
    pidfile = folder / "redis.pid"
    conf = folder / "redis.conf"
    conf.touch(mode=0o600)
    conf.write_text(f"port {STANDALONE}\nbind 127.0.0.1\ndaemonize yes\ndir {folder}\npidfile {pidfile}\n"
                    f"logfile {folder / 'redis.log'}\nsave \"\"\nrequirepass \"{sandbox.credentials().password}\"\n")
    subprocess.run([redis_binary(), str(conf)], check=True)
    deadline = time.time() + 10
    while not pidfile.exists() and time.time() < deadline:
        time.sleep(0.05)
    yield f"127.0.0.1:{STANDALONE}"
    os.kill(int(pidfile.read_text()), signal.SIGTERM)


def variant(sandbox, name: str, change) -> Path:
    """A copy of the sandbox params (beside it, so relative paths still resolve) with `change` applied."""
    params = yaml.safe_load((sandbox.root / "params.yaml").read_text())
    change(params)
    path = sandbox.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def runbook(runbook_bin, *args) -> subprocess.CompletedProcess:
    return subprocess.run([runbook_bin, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture
def unchanged(sandbox):
    """Asserts after the test that no node's CLUSTER NODES changed (ids, roles, epochs, slots, open slots)."""
    before = cluster_layout(LAYOUT.all_ports, sandbox.credentials())
    yield
    assert cluster_layout(LAYOUT.all_ports, sandbox.credentials()) == before


def test_unknown_key_names_file_and_key(sandbox, runbook_bin, unchanged):
    path = variant(sandbox, "unknown-key", lambda p: p["migration"].update(slots_per_btach=8))
    proc = runbook(runbook_bin, "run", "--params", path)
    assert proc.returncode == 2
    assert f"{path}: migration.slots_per_btach: unknown key" in proc.stderr


def test_password_in_params_is_refused_without_echoing_it(sandbox, runbook_bin, unchanged):
    path = variant(sandbox, "password-inline", lambda p: p["cluster"].update(password="inline-secret-123"))
    proc = runbook(runbook_bin, "run", "--params", path)
    assert proc.returncode == 2
    assert "cluster.password: passwords never go in params" in proc.stderr
    assert "inline-secret-123" not in proc.stdout + proc.stderr


def test_wrong_password(sandbox, runbook_bin, unchanged):
    wrong = sandbox.root / "wrong-password"
    wrong.touch(mode=0o600)
    wrong.write_text("not-the-password\n")
    path = variant(sandbox, "wrong-password", lambda p: p["cluster"].update(password_file="wrong-password"))
    proc = runbook(runbook_bin, "run", "--params", path)
    assert proc.returncode == 2
    assert f"{path}: cluster.password_file: authentication at the seed 127.0.0.1:{PORT}" in proc.stderr
    assert "not-the-password" not in proc.stdout + proc.stderr
    check = runbook(runbook_bin, "check", "--params", path)
    assert check.returncode == 2 and "authentication failed" in check.stderr


def test_unreachable_seed(sandbox, runbook_bin, unchanged):
    def change(p):
        p["cluster"]["seed"] = p["confirm_cluster"] = f"127.0.0.1:{NOWHERE}"
    path = variant(sandbox, "unreachable", change)
    reports = sandbox.root.parent / "reports"
    before = set(reports.glob("*"))
    proc = runbook(runbook_bin, "run", "--params", path)
    assert proc.returncode == 2
    assert f"{path}: cluster.seed: cannot connect to 127.0.0.1:{NOWHERE}" in proc.stderr
    assert set(reports.glob("*")) == before, "a refused run leaves no run folder"


def test_unreachable_new_replica(sandbox, runbook_bin, unchanged):
    path = variant(sandbox, "no-replica", lambda p: p["new_masters"][0].update(replica=f"127.0.0.1:{NOWHERE}"))
    proc = runbook(runbook_bin, "run", "--params", path)
    assert proc.returncode == 2
    assert f"{path}: new_masters.0.replica: 127.0.0.1:{NOWHERE}: cannot connect" in proc.stderr


def test_new_node_not_in_cluster_mode(sandbox, standalone, runbook_bin, unchanged):
    path = variant(sandbox, "standalone", lambda p: p["new_masters"][0].update(address=standalone))
    proc = runbook(runbook_bin, "run", "--params", path)
    assert proc.returncode == 2
    assert f"{path}: new_masters.0.address: {standalone} is not in cluster mode" in proc.stderr


def test_seed_that_is_not_in_cluster_mode(sandbox, standalone, runbook_bin, unchanged):
    def change(p):
        p["cluster"]["seed"] = p["confirm_cluster"] = standalone
    path = variant(sandbox, "standalone-seed", change)
    proc = runbook(runbook_bin, "run", "--params", path)
    assert proc.returncode == 2
    assert f"{path}: cluster.seed: {standalone} is not in cluster mode" in proc.stderr


def test_seed_that_is_not_in_a_cluster(sandbox, runbook_bin, unchanged):
    lone = f"127.0.0.1:{LAYOUT.new_replica_ports[0]}"

    def change(p):
        p["cluster"]["seed"] = p["confirm_cluster"] = lone
        p["new_masters"][0]["replica"] = ""
    path = variant(sandbox, "lone-seed", change)
    proc = runbook(runbook_bin, "run", "--params", path)
    assert proc.returncode == 2
    assert f"{path}: cluster.seed: {lone} is not part of a cluster" in proc.stderr


def test_new_node_that_is_not_empty(sandbox, runbook_bin, unchanged):
    new_master = node_client(f"127.0.0.1:{LAYOUT.new_master_ports[0]}", sandbox.credentials())
    new_master.execute_command("DEBUG", "POPULATE", 3, "leftover")
    try:
        proc = runbook(runbook_bin, "run", "--params", sandbox.root / "params.yaml")
    finally:
        new_master.flushall()
    assert proc.returncode == 2
    assert (f"params.yaml: new_masters.0.address: 127.0.0.1:{LAYOUT.new_master_ports[0]} holds 3 keys; "
            "a new node must be empty") in proc.stderr


def test_open_slot_is_unhealthy(sandbox, runbook_bin):
    creds = sandbox.credentials()
    topo = observe(f"127.0.0.1:{PORT}", creds)
    first, second = topo.masters()[:2]
    slot = min(topo.slots_by_master()[first.id])
    node_client(first.address, creds).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", second.id)
    try:
        before = cluster_layout(LAYOUT.all_ports, creds)
        check = runbook(runbook_bin, "check", "--params", sandbox.root / "params.yaml")
        run = runbook(runbook_bin, "run", "--params", sandbox.root / "params.yaml",
                      "--out", sandbox.root.parent / "run-open-slot")
        after = cluster_layout(LAYOUT.all_ports, creds)
    finally:
        node_client(first.address, creds).execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"{first.address} slot {slot} migrating" in check.stdout and "UNHEALTHY" in check.stdout
    assert run.returncode == 1, run.stdout + run.stderr
    assert "00_preflight: fail" in run.stdout and "no open slots" in run.stdout and "20_add_masters" not in run.stdout
    assert after == before


def lock_holder(sandbox):
    client = cluster_client([f"127.0.0.1:{PORT}"], sandbox.credentials())
    try:
        return read_lock(client)
    finally:
        client.close()


def test_second_run_while_one_is_in_progress_is_refused(sandbox, runbook_bin, unchanged):
    """The first run scans the big keys at 300 commands/s (about 20 s for the module's 2000 keys), so it surely still
    holds the lock when the second starts: a quick first run could end before the second, which then rightly runs."""
    params = sandbox.root / "params.yaml"
    slow = variant(sandbox, "slow-scan", lambda p: p.setdefault("bigkeys", {}).update(max_ops_per_s=300))
    first = subprocess.Popen([runbook_bin, "run", "--params", str(slow), "--only", "00_preflight",
                              "--out", str(sandbox.root.parent / "run-first")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while (state := lock_holder(sandbox)) is None and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert state is not None, "the first run never took the lock"
        second = runbook(runbook_bin, "run", "--params", params, "--only", "30_plan")
        assert second.returncode == 2
        assert f"locked by run {state.holder.run_id} (runbook run)" in second.stderr
        assert f"pid {first.pid}, since {state.holder.started_utc}" in second.stderr and "it is alive" in second.stderr
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert lock_holder(sandbox) is None, "the first run released its lock"


def test_stale_lock_is_recognised_and_taken_over_deliberately(sandbox, runbook_bin, unchanged):
    params = sandbox.root / "params.yaml"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from runbook_lib.cluster.lock import RunLock\n"
        "from runbook_lib.sandbox import Sandbox\n"
        f"sb = Sandbox({str(sandbox.root)!r})\n"
        f"RunLock('127.0.0.1:{PORT}', sb.credentials(), 'killed-run', 'runbook run').acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    refused = runbook(runbook_bin, "run", "--params", params, "--only", "30_plan")
    assert refused.returncode == 2
    assert "locked by run killed-run" in refused.stderr and f"its process {holder.pid} is gone" in refused.stderr
    assert "--take-over-lock" in refused.stderr
    assert lock_holder(sandbox).holder.run_id == "killed-run"
    out = sandbox.root.parent / "run-takeover"
    taken = runbook(runbook_bin, "run", "--params", params, "--only", "30_plan", "--take-over-lock", "--out", out)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert "took over the stale run lock of run killed-run" in taken.stdout
    assert lock_holder(sandbox) is None
    assert "killed-run" in (out / "provenance.json").read_text()


def test_resume_and_rollback_respect_the_lock(sandbox, runbook_bin, unchanged):
    params = sandbox.root / "params.yaml"
    keys = key_count(observe(f"127.0.0.1:{PORT}", sandbox.credentials()), sandbox.credentials())
    lock = RunLock(f"127.0.0.1:{PORT}", sandbox.credentials(), "holding-run", "runbook run").acquire()
    try:
        topo = observe(f"127.0.0.1:{PORT}", sandbox.credentials())
        assert key_count(topo, sandbox.credentials()) == keys, "the lock key is not counted as data"
        for command in ("resume", "rollback"):
            proc = runbook(runbook_bin, command, "--params", params)
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert "locked by run holding-run" in proc.stderr and "it is alive" in proc.stderr
    finally:
        assert lock.release()
    assert lock_holder(sandbox) is None
