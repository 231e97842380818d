"""The tests' port allocator (tests/conftest.py): xdist workers never share a port, nor the multi-host namespaces,
links and subnets derived from it, and no data port or bus port reaches the ephemeral range."""

from __future__ import annotations

import pytest

from runbook_lib.sandbox import network
from tests.conftest import BUS_SHIFT, EPHEMERAL_PORTS, SANDBOX_PORTS, PortAllocator


def blocks(offset: int, workers: int, per_worker: int) -> list[list[int]]:
    """`per_worker` sandbox blocks from each of `workers` allocators: what each worker's modules take at import."""
    allocators = [PortAllocator(offset, w, workers) for w in range(workers)]
    return [[allocator.take(SANDBOX_PORTS) for _ in range(per_worker)] for allocator in allocators]


@pytest.mark.parametrize("offset,workers", [(0, 1), (0, 3), (10000, 3), (10000, 4), (12000, 2)])
def test_workers_get_disjoint_ports_below_the_ephemeral_range(offset, workers):
    taken = [b for worker in blocks(offset, workers, 60) for b in worker]
    ports = [p for b in taken for p in range(b, b + SANDBOX_PORTS)]
    assert len(ports) == len(set(ports)), "two blocks overlap"
    assert min(ports) == 7000 + offset
    assert max(ports) + BUS_SHIFT < EPHEMERAL_PORTS
    assert not set(ports) & {p + BUS_SHIFT for p in ports}, "a data port is another node's bus port"


def test_multi_host_names_and_subnets_differ_between_workers():
    firsts = [b for worker in blocks(10000, 3, 60) for b in worker]
    plans = [network.plan(port, 4) for port in firsts] + [network.plan(port, 4, ipv6=True) for port in firsts]
    namespaces = [h.namespace for plan in plans[:len(firsts)] for h in plan]
    assert len(namespaces) == len(set(namespaces))
    ips = [h.ip for plan in plans for h in plan]
    assert len(ips) == len(set(ips))
    assert all(len(f"rb{port}br") <= 15 and len(f"rb{port}v7") <= 15 for port in firsts), "link names fit IFNAMSIZ"


def test_a_worker_that_runs_out_of_ports_says_so():
    allocator = PortAllocator(10000, 2, 3)
    with pytest.raises(ValueError, match="ports end at"):
        while True:
            allocator.take(SANDBOX_PORTS)
    with pytest.raises(ValueError, match="smaller offset"):
        PortAllocator(15750, 0, 3)
