"""An expansion across four hosts (network namespaces, each with its own address and host name), params naming the
nodes by host name while the cluster knows them by IP, with a 0.5 ms round trip where tc netem exists."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from runbook_lib.addresses import parse_address, resolve
from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.topology import observe
from runbook_lib.config import load_params
from runbook_lib.exceptions import SandboxError
from runbook_lib.sandbox import Sandbox, SandboxLayout, changed_keys, network
from runbook_lib.sections.validate import key_count
from tests.conftest import PORT_OFFSET, run_expansion, start_sandbox

pytestmark = pytest.mark.integration
PORT = 8100 + PORT_OFFSET
KEYS = 4000
RTT_MS = 0.5
MISSING = network.unavailable()
NO_NETEM = network.netem_unavailable()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    if MISSING:
        pytest.skip(f"needs network namespaces: {MISSING}")
    sb = start_sandbox(tmp_path_factory.mktemp("multihost") / "sandbox", PORT, KEYS, hosts=4,
                       rtt_ms=0.0 if NO_NETEM else RTT_MS)
    yield sb
    sb.down()


@pytest.fixture(scope="module")
def run(sandbox, runbook_bin):
    return run_expansion(sandbox, runbook_bin, "run1")


def test_each_host_has_its_own_namespace_address_and_name(sandbox):
    hosts = sandbox.hosts()
    assert len(hosts) == 4 and len({h.ip for h in hosts}) == 4
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for h in hosts:
        assert h.namespace in listed and resolve(h.name) == [h.ip]
        assert not h.ip.startswith("127.")
    params = load_params(sandbox.root / "params.yaml").model
    assert params.cluster.seed == f"{hosts[0].name}:{PORT}"
    assert all(parse_address(n.address)[0].endswith(".test") for n in params.new_masters)


def test_run_succeeds(run):
    proc, _ = run
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cluster_knows_ips_and_params_names_match_them(run, sandbox):
    creds = sandbox.credentials()
    params = load_params(sandbox.root / "params.yaml").model
    topo = observe(params.cluster.seed, creds)
    assert all(e.address == f"{e.ip}:{e.port}" and not e.hostname for e in topo.nodes.values())
    new = params.new_masters[0]
    master, replica = topo.by_address(new.address), topo.by_address(new.replica)
    assert master is not None and master.is_master and master.ip == resolve(parse_address(new.address)[0])[0]
    assert replica is not None and replica.master_id == master.id
    assert f"({master.ip}:{master.port} in the cluster)" in topo.known_as(new.address)
    assert len(topo.views) == 8, "the seed, named by host name, was read twice or a node was missed"


def test_redis_cli_check_is_clean_and_data_unchanged(run, sandbox, redis_cli):
    seed = sandbox.address(PORT)
    env = {"REDISCLI_AUTH": sandbox.credentials().password, "PATH": "/usr/bin:/bin"}
    check = subprocess.run([redis_cli, "--cluster", "check", seed], capture_output=True, text=True, env=env,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All 16384 slots covered" in check.stdout and "[ERR]" not in check.stdout
    assert f"{KEYS} keys in 4 masters" in check.stdout
    creds = sandbox.credentials()
    topo = observe(seed, creds)
    owned = topo.slots_by_master()
    assert len(topo.masters()) == 4 and all(abs(len(owned[m.id]) - 4096) <= 1 for m in topo.masters())
    assert all(len(topo.replicas_of(m.id)) == 1 for m in topo.masters())
    assert key_count(topo, creds) == KEYS
    assert changed_keys(seed, creds, KEYS) == []


def test_preflight_and_backup_say_what_they_could_not_check_on_other_hosts(run, sandbox):
    _, out = run
    checks = {c["name"]: c for c in json.loads((out / "results" / "00_preflight.json").read_text())["checks"]}
    kernel = checks["kernel settings on other hosts"]
    assert kernel["status"] == "warn" and "Not checked on these 4 hosts" in kernel["detail"]
    hosts = sandbox.hosts()
    assert all(h.ip in kernel["detail"] for h in hosts)
    for h in hosts[2:]:
        assert f"{h.name} ({h.ip}) (nodes " in kernel["detail"], "a host named and known by IP counts once"
    assert "sysctl vm.overcommit_memory" in kernel["detail"]
    backups = json.loads((out / "backup" / "backups.json").read_text())
    assert backups and all("on another host, not copied: `scp " in b["status"] for b in backups)


def test_round_trip_is_emulated(run, sandbox):
    if NO_NETEM:
        pytest.skip(f"no round trip emulated here: {NO_NETEM}")
    client = node_client(sandbox.address(PORT), sandbox.credentials())
    client.ping()
    start = time.perf_counter()
    for _ in range(20):
        client.ping()
    assert (time.perf_counter() - start) / 20 * 1000 >= RTT_MS * 0.9


def test_down_removes_every_namespace_link_and_name(run, sandbox):
    hosts = sandbox.hosts()
    sandbox.down()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert not [h for h in hosts if h.namespace in listed]
    assert f"rb{PORT}" not in links
    assert not [h for h in hosts if resolve(h.name)] and f"rb{PORT}" not in open("/etc/hosts").read()
    assert not (sandbox.root / network.RECORD_FILE).exists()


def test_rtt_needs_netem_and_says_so_leaving_nothing(tmp_path):
    """Where tc netem is missing, asking for a round trip fails with tc's own words and leaves no namespace."""
    if MISSING:
        pytest.skip(f"needs network namespaces: {MISSING}")
    if not NO_NETEM:
        pytest.skip("tc netem works here; test_round_trip_is_emulated measures the delay instead")
    sb, port = Sandbox(tmp_path / "sandbox"), PORT + 90
    with pytest.raises(SandboxError, match="netem"):
        sb.up(SandboxLayout(port=port, hosts=2, rtt_ms=RTT_MS), keys=0, progress=False)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"rb{port}h" not in listed and f"rb{port}" not in open("/etc/hosts").read()
    assert not sb.running_pids()
