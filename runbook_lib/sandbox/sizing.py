"""How much memory a sandbox's data takes: each node's maxmemory sized from the keys it will hold, and a refusal,
before any node starts, when this host cannot hold them."""

from __future__ import annotations

from dataclasses import dataclass

from runbook_lib import meminfo
from runbook_lib.exceptions import SandboxError

BYTES_PER_KEY = {"mixed": 1000, "small": 150}
"""used_memory per key on a master, rounded up from what each `sample_keys` profile measured on redis 7.0 over three
masters: mixed 1 000 at 200 000 keys and 870 at 2 000 000; small 142 at 10 000 000 (75 of them data, the rest the
keyspace's own overhead)."""
HEADROOM = 2.0
"""A node's maxmemory over its share of the data: room for the slots a reshape hands it and for fragmentation."""
MIN_MAXMEMORY = 1 << 30
RESIDENT_OVER_USED = 1.3
"""A node's resident set over its used_memory (allocator fragmentation, replication and client buffers)."""
HOST_SHARE = 0.8
"""The share of this host's available memory a sandbox may plan to take; the rest is the runbook's and the OS's."""


@dataclass(frozen=True)
class Footprint:
    """What a sandbox's data takes: bytes per existing master, each node's maxmemory, and the resident set of all."""
    keys: int
    values: str
    per_master: int
    maxmemory: int
    resident: int


def footprint(keys: int, values: str, masters: int, replicas: int) -> Footprint:
    """The memory `keys` sample keys of the `values` profile take on `masters` masters with `replicas` each."""
    data = keys * BYTES_PER_KEY[values]
    per_master = data // max(masters, 1)
    maxmemory = max(MIN_MAXMEMORY, int(per_master * HEADROOM))
    return Footprint(keys, values, per_master, maxmemory, int(data * (1 + replicas) * RESIDENT_OVER_USED))


def check_host(fp: Footprint, available: int | None = None) -> None:
    """Refuse a sandbox whose nodes would need more than HOST_SHARE of this host's available memory."""
    available = meminfo.read("MemAvailable") if available is None else available
    if available is None or fp.resident <= available * HOST_SHARE:
        return
    fitting = int(available * HOST_SHARE / fp.resident * fp.keys)
    raise SandboxError(f"{fp.keys:,} keys of {fp.values} values need about {fp.resident / 2**30:.1f} GiB over masters "
                       f"and replicas, more than {HOST_SHARE:.0%} of the {available / 2**30:.1f} GiB this host has "
                       f"available; load at most about {fitting:,} keys"
                       + (", or use --values small" if fp.values != "small" else ""))
