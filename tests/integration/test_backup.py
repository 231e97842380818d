"""Backups against a real sandbox cluster: BGSAVE on replicas, copied RDBs that load into a standalone server."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import redis

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.topology import observe
from runbook_lib.config import Backup
from runbook_lib.exceptions import CheckFailed
from runbook_lib.sandbox import Sandbox, SandboxLayout, redis_binary
from runbook_lib.sections.backup import backup, checks, is_local, restore_instructions
from tests.conftest import port_block

pytestmark = pytest.mark.integration

PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
RESTORE_PORT = port_block(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 3-master, 3-replica sandbox with 5000 sample keys and no automatic saves."""
    sandbox = Sandbox(tmp_path_factory.mktemp("backup-sandbox"))
    try:
        sandbox.up(SandboxLayout(port=PORT), keys=5000, persistence=False, progress=False)
        creds = sandbox.credentials()
        yield observe(SEED, creds), creds
    finally:
        sandbox.down()


@pytest.fixture(scope="module")
def records(cluster, tmp_path_factory):
    topo, creds = cluster
    dest = tmp_path_factory.mktemp("backup-dest")
    return dest, backup(topo, creds, dest, Backup(timeout_s=60), progress=False)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait_no_save(client: redis.Redis, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.info("persistence")["rdb_bgsave_in_progress"]:
        assert time.monotonic() < deadline, "a BGSAVE kept running"
        time.sleep(0.1)


def test_one_replica_per_shard_saved_and_copied(cluster, records):
    topo, creds = cluster
    dest, recs = records
    masters = [m for m in topo.masters() if topo.slots_by_master().get(m.id)]
    assert [r.shard_master for r in recs] == [m.address for m in masters]
    for master, r in zip(masters, recs):
        assert r.role == "replica"
        assert r.node == topo.replicas_of(master.id)[0].address
        assert r.status == "ok"
        assert r.lastsave_after > r.lastsave_before
        assert r.keys == node_client(master.address, creds).dbsize()
        copied = Path(r.copied_to)
        assert copied == dest / f"{r.node.replace(':', '_')}.rdb"
        assert r.bytes == copied.stat().st_size > 0
        assert r.sha256 == _sha256(copied) == _sha256(Path(r.rdb_path))
    assert sum(r.keys for r in recs) == 5000


def test_backups_json_lists_every_record(records):
    dest, recs = records
    assert json.loads((dest / "backups.json").read_text()) == [asdict(r) for r in recs]


def test_rdb_restores_into_a_standalone_server(records, tmp_path):
    _, recs = records
    record = recs[0]
    shutil.copyfile(record.copied_to, tmp_path / "dump.rdb")
    assert _sha256(tmp_path / "dump.rdb") == record.sha256
    proc = subprocess.Popen([redis_binary(), "--port", str(RESTORE_PORT), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no", "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=RESTORE_PORT, socket_timeout=5)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping() and client.info("persistence")["loading"] == 0:
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the standalone redis-server did not start"
            time.sleep(0.05)
        assert client.dbsize() == record.keys
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_restore_instructions_name_every_file(records):
    _, recs = records
    text = restore_instructions(recs)
    for r in recs:
        assert r.copied_to in text and r.sha256 in text and r.shard_master in text
    assert "SHUTDOWN NOSAVE" in text and "appendonly no" in text and "DBSIZE" in text


def test_back_to_back_backups_each_advance_lastsave(cluster, records, tmp_path):
    topo, creds = cluster
    _, first = records
    again = backup(topo, creds, tmp_path, Backup(timeout_s=60), progress=False)
    for old, new in zip(first, again):
        assert new.lastsave_before >= old.lastsave_after
        assert new.lastsave_after > new.lastsave_before


def test_waits_for_a_save_already_running(cluster, tmp_path):
    topo, creds = cluster
    master = topo.masters()[0]
    replica = node_client(topo.replicas_of(master.id)[0].address, creds)
    saves = replica.info("persistence")["rdb_saves"]
    replica.config_set("rdb-key-save-delay", 1000)
    replica.bgsave()
    replica.config_set("rdb-key-save-delay", 0)
    assert replica.info("persistence")["rdb_bgsave_in_progress"] == 1
    recs = backup(topo, creds, tmp_path, Backup(timeout_s=60), progress=False)
    assert recs[0].status == "ok"
    assert replica.info("persistence")["rdb_saves"] == saves + 2


def test_timeout_raises_check_failed(cluster, tmp_path):
    topo, creds = cluster
    master = topo.masters()[0]
    replica = node_client(topo.replicas_of(master.id)[0].address, creds)
    replica.config_set("rdb-key-save-delay", 2000)
    try:
        with pytest.raises(CheckFailed, match="timeout_s"):
            backup(topo, creds, tmp_path, Backup(timeout_s=1.0), progress=False)
    finally:
        replica.config_set("rdb-key-save-delay", 0)
        _wait_no_save(replica)


def test_an_rdb_over_the_copy_threshold_is_recorded_where_it_lies_not_copied(cluster, tmp_path):
    topo, creds = cluster
    master = topo.masters()[0]
    saver = node_client(topo.replicas_of(master.id)[0].address, creds)
    saver.config_set("save", "3600 1")
    try:
        recs = backup(topo, creds, tmp_path, Backup(timeout_s=60, copy_max_bytes=1000), progress=False)
    finally:
        saver.config_set("save", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups.json"], "nothing copied"
    for r in recs:
        source = Path(r.rdb_path)
        assert r.copied_to is None and r.status == "ok"
        assert r.location == f"127.0.0.1:{source}"
        assert r.bytes == source.stat().st_size > 1000
        assert r.sha256 == _sha256(source)
        assert "over 0.000953674 MB" in r.copy
    text = restore_instructions(recs)
    assert all(r.location in text and r.sha256 in text for r in recs)
    assert "copied off that node" in text
    found = checks(recs)
    assert [c.status for c in found] == ["warn", "pass", "pass"]
    assert "save points (3600 1) will overwrite it" in found[0].detail
    assert f"at {recs[1].location} ({recs[1].bytes} bytes" in found[1].detail


def test_always_copies_and_never_leaves_in_place(cluster, tmp_path):
    topo, creds = cluster
    always = backup(topo, creds, tmp_path / "always", Backup(timeout_s=60, copy="always", copy_max_bytes=0),
                    progress=False)
    assert all(r.copied_to and r.sha256 == _sha256(Path(r.copied_to)) for r in always)
    never = backup(topo, creds, tmp_path / "never", Backup(timeout_s=60, copy="never"), progress=False)
    assert all(r.copied_to is None and r.sha256 == _sha256(Path(r.rdb_path)) for r in never)


def test_the_save_timeout_follows_used_memory(cluster, tmp_path):
    topo, creds = cluster
    master = topo.masters()[0]
    replica = node_client(topo.replicas_of(master.id)[0].address, creds)
    used = replica.info("memory")["used_memory"]
    recs = backup(topo, creds, tmp_path, Backup(timeout_floor_s=5, timeout_per_gb_s=1e6), progress=False)
    assert recs[0].timeout_s == pytest.approx(5 + 1e6 * used / 1024 ** 3, rel=0.2)
    replica.config_set("rdb-key-save-delay", 2000)
    try:
        with pytest.raises(CheckFailed, match="follows the node's used_memory"):
            backup(topo, creds, tmp_path, Backup(timeout_floor_s=1.0, timeout_per_gb_s=0), progress=False)
    finally:
        replica.config_set("rdb-key-save-delay", 0)
        _wait_no_save(replica)


def test_is_local():
    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1")
    assert not is_local("192.0.2.1")
    assert not is_local("no-such-host.invalid")
