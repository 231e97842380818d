"""Preflight's judgements without a cluster: parity naming the odd node, headroom, host memory, CPU, kernel
settings (from a fake /proc and /sys), port probes, big-key checks, the bus port in CLUSTER NODES."""

from __future__ import annotations

import pytest

from runbook_lib.cluster.topology import parse_cluster_nodes
from runbook_lib.config import BigKeys
from runbook_lib.sections import bigkeys, host, preflight
from runbook_lib.sections.preflight import NodeFacts

MB = 1024 * 1024
GB = 1024 * MB


def fact(address: str, **changes) -> NodeFacts:
    base = dict(address=address, role="master", version="7.0.15", engine="redis",
                config={name: "x" for name in preflight.PARITY_SETTINGS}, used_memory=100 * MB, maxmemory=GB,
                connected_clients=5, maxclients=10000, total_system_memory=16 * GB, cluster_state="ok")
    base.update(changes)
    return NodeFacts(**base)


def fake_host(tmp_path, overcommit="1", thp="always madvise [never]", swappiness="1", meminfo="MemTotal: 4096 kB\n"):
    for relative, text in ((host.KERNEL_FILES["vm.overcommit_memory"], overcommit),
                           (host.KERNEL_FILES["transparent_hugepage"], thp),
                           (host.KERNEL_FILES["vm.swappiness"], swappiness), ("proc/meminfo", meminfo)):
        if text is not None:
            path = tmp_path / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")
    return tmp_path


def test_config_parity_names_the_odd_node_and_its_value():
    facts = [fact(f"10.0.0.{i}:7000") for i in range(1, 5)]
    facts.append(fact("10.0.0.9:7000", new=True, config={**facts[0].config, "maxmemory-policy": "allkeys-lru"}))
    check = preflight.config_parity(facts)
    assert check.status == "fail"
    assert "maxmemory-policy: 10.0.0.9:7000 has 'allkeys-lru' where 4 nodes have 'x'" in check.detail
    assert preflight.config_parity(facts[:4]).status == "pass"
    assert [r["new"] for r in preflight.config_table(facts)] == [False] * 4 + [True]


def test_version_parity_names_the_odd_node_and_atomic_migration():
    facts = [fact("a:1"), fact("b:1"), fact("c:1", version="8.4.0")]
    check = preflight.version_parity(facts)
    assert check.status == "fail" and "c:1 runs redis 8.4.0 where 2 nodes run redis 7.0.15" in check.detail
    assert "atomic slot migration" in check.detail
    assert "legacy MIGRATE" in preflight.version_parity(facts[:2]).detail


def test_headroom_names_the_worst_node():
    checks = preflight.headroom([fact("a:1"), fact("b:1", used_memory=900 * MB)], memory_pct=80)
    assert checks[0].status == "fail" and "b:1 uses 87.9 %" in checks[0].detail
    checks = preflight.headroom([fact("a:1"), fact("b:1", used_memory=300 * MB)], memory_pct=80)
    assert checks[0].status == "pass" and "highest b:1" in checks[0].detail
    checks = preflight.headroom([fact("a:1", maxmemory=0)], memory_pct=80)
    assert checks[0].status == "warn" and "unlimited" in checks[0].detail
    checks = preflight.headroom([fact("a:1", connected_clients=9000)], memory_pct=80)
    assert checks[1].status == "fail" and "9000 of 10000" in checks[1].detail


def test_host_memory_adds_up_the_nodes_of_each_host():
    facts = [fact("203.0.113.1:7000"), fact("203.0.113.1:7001"), fact("203.0.113.2:7000", total_system_memory=0)]
    checks = {c.name: c for c in preflight.host_memory(facts, memory_pct=80, ram_here=8 * GB)}
    assert checks["host memory 203.0.113.1"].status == "pass"
    assert "2 nodes use 200 MB" in checks["host memory 203.0.113.1"].detail
    assert "total_system_memory in INFO" in checks["host memory 203.0.113.1"].detail
    assert checks["host memory 203.0.113.2"].status == "warn"
    assert "not verifiable from here" in checks["host memory 203.0.113.2"].detail
    crowded = [fact(f"203.0.113.1:{p}", total_system_memory=2 * GB) for p in (7000, 7001, 7002)]
    assert "more than the RAM" in preflight.host_memory(crowded, 80, ram_here=0)[0].detail
    full = [fact("203.0.113.1:7000", used_memory=900 * MB, total_system_memory=GB)]
    assert preflight.host_memory(full, 80, ram_here=0)[0].status == "fail"


def test_local_nodes_use_memtotal_of_this_host():
    checks = preflight.host_memory([fact("127.0.0.1:7000", maxmemory=MB, used_memory=MB)], 80, ram_here=4 * GB)
    assert checks[0].status == "pass" and "MemTotal here" in checks[0].detail and "of 4.0 GB RAM" in checks[0].detail


def test_cpu_check_against_the_gate():
    facts = [fact("a:1", cpu_pct=3.0), fact("b:1", cpu_pct=12.5)]
    assert preflight.cpu_check(facts, 70, 2.0).status == "pass"
    assert "highest b:1: 12.5 %" in preflight.cpu_check(facts, 70, 2.0).detail
    facts[1].cpu_pct = 85.0
    assert preflight.cpu_check(facts, 70, 2.0).status == "fail"
    facts[1].cpu_pct = None
    assert preflight.cpu_check(facts, 70, 2.0).status == "warn"


@pytest.mark.parametrize("name, value, status, words", [
    ("vm.overcommit_memory", "1", "pass", "cannot fail"),
    ("vm.overcommit_memory", "0", "warn", "want 1"),
    ("vm.overcommit_memory", "2", "warn", "Cannot allocate memory"),
    ("transparent_hugepage", "always madvise [never]", "pass", "never"),
    ("transparent_hugepage", "always [madvise] never", "warn", "recommends never"),
    ("transparent_hugepage", "[always] madvise never", "warn", "latency spikes"),
    ("vm.swappiness", "1", "pass", "real pressure"),
    ("vm.swappiness", "10", "pass", "real pressure"),
    ("vm.swappiness", "60", "warn", "want at most 10"),
])
def test_kernel_judgements(name, value, status, words):
    got, reason = preflight.judge_kernel(name, value)
    assert got == status and words in reason


def test_kernel_checks_read_this_host(tmp_path):
    root = fake_host(tmp_path, overcommit="0", swappiness=None)
    checks = preflight.kernel_checks(["127.0.0.1:7000", "127.0.0.1:7001"], root)
    assert [(c.name, c.status) for c in checks] == [("kernel vm.overcommit_memory", "warn"),
                                                    ("kernel transparent_hugepage", "pass"),
                                                    ("kernel vm.swappiness", "warn")]
    assert "(this host, 2 nodes)" in checks[0].detail and "cannot read it on this host" in checks[2].detail


def test_kernel_checks_of_other_hosts_are_not_verifiable(tmp_path):
    checks = preflight.kernel_checks(["203.0.113.7:7000", "203.0.113.8:7000"], fake_host(tmp_path))
    assert len(checks) == 1 and checks[0].status == "warn"
    assert ("not verifiable from here: 203.0.113.7 (nodes 203.0.113.7:7000), 203.0.113.8 (nodes 203.0.113.8:7000). "
            "Not checked on these 2 hosts: vm.overcommit_memory, transparent_hugepage, vm.swappiness") in checks[0].detail


def test_mem_total_reads_meminfo(tmp_path):
    assert host.mem_total(fake_host(tmp_path, meminfo="MemFree: 1 kB\nMemTotal: 2048 kB")) == 2048 * 1024
    assert host.mem_total(tmp_path / "nowhere") is None


def test_port_checks_name_the_closed_port():
    probes = [{"node": "a:7000", "data port": 7000, "data": "open", "bus port": 17000, "bus port from": "CLUSTER NODES",
               "bus": "Connection refused"},
              {"node": "b:7000", "data port": 7000, "data": "open", "bus port": 17000, "bus port from": "CLUSTER NODES",
               "bus": "open"}]
    checks = preflight.port_checks(probes)
    assert [(c.name, c.status) for c in checks] == [("ports a:7000", "fail")]
    assert checks[0].detail.startswith("bus port 17000: Connection refused")
    assert preflight.port_checks(probes[1:])[0].status == "pass"


def test_bus_port_is_parsed_from_cluster_nodes():
    entries = parse_cluster_nodes("aaa 10.0.0.1:7000@17555,host.example myself,master - 0 0 1 connected 0-16383\n"
                                  "bbb :7006@17006 master - 0 0 0 connected\n")
    assert entries["aaa"].bus_port == 17555 and entries["bbb"].bus_port == 17006


def scan_result(*sizes: int) -> bigkeys.ScanResult:
    stats = [bigkeys.KeyStat(key=f"k{i}", node="a:1", slot=i, type="string", length=n, bytes=n)
             for i, n in enumerate(sizes)]
    big = [s for s in stats if s.bytes >= 10 * MB]
    return bigkeys.ScanResult(top=stats, per_slot={s.slot: {"keys": 1, "bytes": s.bytes} for s in stats}, big=big,
                              keys_scanned=len(stats), seconds=0.5)


def test_big_key_checks_warn_with_slot_node_and_size():
    result = scan_result(100, 12 * MB, 20 * MB)
    checks = bigkeys.checks(result, BigKeys())
    assert [(c.name, c.status) for c in checks] == [("big key k1", "warn"), ("big key k2", "warn")]
    assert "12.0 MB string (length 12582912) in slot 1 on a:1" in checks[0].detail
    assert bigkeys.checks(result, BigKeys(), slots={0})[0].status == "pass"
    assert bigkeys.checks(scan_result(100), BigKeys())[0].detail == "no key at or over 10 MB among 1 keys"
    many = scan_result(*[11 * MB] * 25)
    rows = bigkeys.checks(many, BigKeys())
    assert len(rows) == 21 and "5 more keys" in rows[-1].detail


def test_scan_result_round_trips_through_json():
    result = scan_result(100, 12 * MB)
    data = bigkeys.to_json(result, 10 * MB)
    assert list(data["per_slot"]) == ["0", "1"] and data["threshold_bytes"] == 10 * MB
    back = bigkeys.from_json(data)
    assert back.per_slot == result.per_slot and back.big == result.big and back.top == result.top
    assert bigkeys.slot_bytes(back) == {0: 100, 1: 12 * MB}
    assert "**2** keys in **2** slots" in bigkeys.describe(back, 10 * MB)
