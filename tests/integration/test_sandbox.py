"""The sandbox: refuses taken ports and a second `up`, and `down` stops exactly its own processes."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.topology import observe
from runbook_lib.exceptions import SandboxError
from runbook_lib.sandbox import Sandbox, SandboxLayout, load_data
from tests.conftest import module_sandbox, port_block, start_sandbox

pytestmark = pytest.mark.integration
PORT = port_block()
TAKEN = port_block()
OTHER = port_block(6)


sandbox = module_sandbox(PORT, 2000)


def test_layout_and_data(sandbox):
    topo = observe(f"127.0.0.1:{PORT}", sandbox.credentials())
    masters = topo.masters()
    assert [m.address for m in masters] == [f"127.0.0.1:{PORT + i}" for i in range(3)]
    assert all(len(topo.replicas_of(m.id)) == 1 for m in masters)
    assert not topo.by_address(f"127.0.0.1:{PORT + 6}") and not topo.by_address(f"127.0.0.1:{PORT + 7}")
    assert sorted(sandbox.running_pids()) == list(range(PORT, PORT + 8))


def test_password_file_is_owner_only_and_params_do_not_hold_it(sandbox):
    assert stat.S_IMODE(os.stat(sandbox.password_path).st_mode) == 0o600
    password = sandbox.credentials().password
    assert password not in (sandbox.root / "params.yaml").read_text()


def test_second_up_is_refused(sandbox):
    with pytest.raises(SandboxError, match="already up"):
        sandbox.up(SandboxLayout(port=PORT), keys=0, progress=False)


def test_each_node_gets_the_maxmemory_sized_from_the_keys(sandbox):
    sized = sandbox.state()["maxmemory"]
    for port in range(PORT, PORT + 8):
        assert node_client(f"127.0.0.1:{port}", sandbox.admin_credentials()).config_get("maxmemory") == \
            {"maxmemory": str(sized)}


def test_a_sandbox_this_host_cannot_hold_is_refused_before_any_node_starts(tmp_path):
    root = tmp_path / "huge"
    with pytest.raises(SandboxError, match=r"keys of mixed values need about .* GiB .* available; load at most"):
        Sandbox(root).up(SandboxLayout(port=OTHER), keys=10**12, progress=False)
    assert not root.exists()


def test_a_master_out_of_memory_stops_the_load_with_a_sandbox_error(sandbox):
    master = node_client(f"127.0.0.1:{PORT}", sandbox.admin_credentials())
    before = master.config_get("maxmemory")["maxmemory"]
    master.config_set("maxmemory", master.info("memory")["used_memory"] + 2**20)
    try:
        with pytest.raises(SandboxError, match=rf"the master 127.0.0.1:{PORT} reached its maxmemory after about"):
            load_data(f"127.0.0.1:{PORT}", sandbox.admin_credentials(), 20_000, progress=False)
    finally:
        master.config_set("maxmemory", before)


def test_taken_port_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", TAKEN + 5))
        s.listen()
        with pytest.raises(SandboxError, match=str(TAKEN + 5)):
            Sandbox(tmp_path / "other").up(SandboxLayout(port=TAKEN), keys=0, progress=False)


def test_down_stops_only_its_own(tmp_path, sandbox):
    other = start_sandbox(tmp_path / "other", OTHER, 0, new_masters=0)
    pids = other.running_pids()
    assert len(pids) == 6
    assert other.down() == sorted(pids)
    assert other.running_pids() == {}
    assert len(sandbox.running_pids()) == 8
