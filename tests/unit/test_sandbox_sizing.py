"""The sandbox's memory sizing: maxmemory follows the keys, and a sandbox this host cannot hold is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runbook_lib import meminfo
from runbook_lib.exceptions import SandboxError
from runbook_lib.sandbox import sizing
from runbook_lib.sandbox.local import _node_config


def test_a_small_sandbox_keeps_the_floor_and_a_large_one_gets_room_for_its_share():
    assert sizing.footprint(200_000, "mixed", 3, 1).maxmemory == sizing.MIN_MAXMEMORY
    big = sizing.footprint(10_000_000, "mixed", 3, 1)
    assert big.per_master == 10_000_000 * sizing.BYTES_PER_KEY["mixed"] // 3
    assert big.maxmemory == int(big.per_master * sizing.HEADROOM) > sizing.MIN_MAXMEMORY


@given(keys=st.integers(0, 10**9), masters=st.integers(1, 50), replicas=st.integers(0, 3),
       values=st.sampled_from(sorted(sizing.BYTES_PER_KEY)))
def test_maxmemory_always_holds_a_masters_share_with_headroom(keys, masters, replicas, values):
    fp = sizing.footprint(keys, values, masters, replicas)
    assert fp.maxmemory >= fp.per_master * sizing.HEADROOM - 1
    assert fp.resident >= fp.per_master * masters * (1 + replicas)


def test_a_sandbox_beyond_the_hosts_memory_is_refused_with_what_fits():
    fp = sizing.footprint(10_000_000, "mixed", 3, 1)
    with pytest.raises(SandboxError, match=r"10,000,000 keys of mixed values need about .* GiB.*load at most about "
                                           r"[\d,]+ keys, or use --values small"):
        sizing.check_host(fp, available=8 * 2**30)
    sizing.check_host(fp, available=64 * 2**30)
    sizing.check_host(sizing.footprint(10_000_000, "small", 3, 1), available=8 * 2**30)


def test_the_node_config_carries_the_sized_maxmemory(tmp_path):
    conf = _node_config(7000, tmp_path, [], persistence=False, maxmemory=3 * 2**30)
    assert f"maxmemory {3 * 2**30}\n" in conf


def test_meminfo_reads_any_field_in_bytes(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal: 2048 kB\nMemAvailable: 1024 kB\n")
    assert meminfo.read("MemAvailable", tmp_path) == 1024 * 1024
    assert meminfo.read("SwapTotal", tmp_path) is None
    assert meminfo.read("MemTotal", tmp_path / "nowhere") is None
