"""Helpers for fault tests: params variants, the CLI as a subprocess, keys placed in chosen slots, end-state checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from redis.crc import key_slot

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.topology import observe, parse_ranges
from runbook_lib.sandbox import Sandbox
from runbook_lib.sections.validate import key_count

RUNBOOK = str(Path(sys.executable).parent / "runbook")


def params_variant(sb: Sandbox, name: str, gates: dict | None = None, **migration) -> Path:
    """A copy of the sandbox's params with migration (and gate) settings changed, beside the original."""
    data = yaml.safe_load((sb.root / "params.yaml").read_text())
    data["migration"] = {**data.get("migration", {}), **migration}
    data["gates"] = {**data.get("gates", {}), **(gates or {})}
    path = sb.root / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str, failpoint: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("RUNBOOK_FAILPOINT", None)
    if failpoint:
        env["RUNBOOK_FAILPOINT"] = failpoint
    return subprocess.run([RUNBOOK, *args], capture_output=True, text=True, env=env, timeout=timeout)


def tag_for_slot(slot: int) -> str:
    """A hash tag whose keys all land in `slot`."""
    i = 0
    while key_slot(f"{{t{i}}}".encode()) != slot:
        i += 1
    return f"t{i}"


def fill_slot(sb: Sandbox, seed: str, slot: int, count: int, prefix: str = "k") -> list[str]:
    """Write `count` string keys into one slot, on its owner; returns their names."""
    creds = sb.credentials()
    topo = observe(seed, creds)
    owner = topo.nodes[topo.reference.owners()[slot]].address
    tag = tag_for_slot(slot)
    keys = [f"{{{tag}}}:{prefix}:{i}" for i in range(count)]
    pipe = node_client(owner, creds).pipeline(transaction=False)
    for k in keys:
        pipe.set(k, k)
    pipe.execute()
    return keys


def assert_expanded(sb: Sandbox, seed: str, keys: int, masters: int = 4) -> None:
    """Balanced masters, one replica each, no open slot, every node agreeing, no key lost."""
    creds = sb.credentials()
    topo = observe(seed, creds)
    owned = topo.slots_by_master()
    assert len(topo.masters()) == masters
    assert all(abs(len(owned[m.id]) - 16384 / masters) <= 1 for m in topo.masters()), {m.address: len(owned[m.id]) for m in topo.masters()}
    assert all(len(topo.replicas_of(m.id)) == 1 for m in topo.masters())
    assert topo.open_slots() == [] and topo.uncovered() == []
    assert key_count(topo, creds) == keys


def assert_original(sb: Sandbox, seed: str, baseline: dict, keys: int) -> None:
    """Every slot back with its recorded owner, no extra node in any view, no key lost."""
    creds = sb.credentials()
    topo = observe(seed, creds)
    owned = topo.slots_by_master()
    for m in baseline["masters"]:
        assert owned[m["id"]] == parse_ranges(m["slots"]), m["address"]
    known = {m["id"] for m in baseline["masters"]} | {r.id for m in topo.masters() for r in topo.replicas_of(m.id)}
    for view in topo.views.values():
        assert set(view.entries) <= known, view.address
    assert len(topo.views) == 6
    assert topo.open_slots() == []
    assert key_count(topo, creds) == keys


def data_snapshot(seed: str, creds, prefix_skip: str = "runbook:") -> dict[str, tuple]:
    """Every key's type, value and TTL presence, listed on each master and read through a cluster client."""
    from runbook_lib.cluster.connection import cluster_client
    topo = observe(seed, creds)
    names = set()
    for m in topo.masters():
        names.update(k.decode() for k in node_client(m.address, creds).scan_iter(count=1000))
    client = cluster_client([m.address for m in topo.masters()], creds)
    readers = {"string": client.get, "hash": client.hgetall, "list": lambda k: client.lrange(k, 0, -1),
               "set": lambda k: sorted(client.smembers(k)), "zset": lambda k: client.zrange(k, 0, -1, withscores=True)}
    out = {}
    try:
        for key in sorted(n for n in names if not n.startswith(prefix_skip)):
            kind = client.type(key)
            if kind == "none":
                continue
            out[key] = (kind, readers[kind](key), client.pttl(key) != -1)
    finally:
        client.close()
    return out


def assert_sound(seed: str, creds, before: dict[str, tuple], masters: int = 4) -> None:
    """The value-level end state: every pre-existing key (TTL keys may expire) has its type, value and TTL presence,
    all slots are covered, none is open, and no master holds keys of a slot it does not own."""
    from runbook_lib.cluster.topology import misplaced_keys
    topo = observe(seed, creds)
    assert topo.uncovered() == [] and topo.open_slots() == [], topo.open_slots()[:5]
    assert misplaced_keys(topo, creds) == {}, "keys stranded on a master that does not own their slot"
    assert len(topo.masters()) == masters
    after = data_snapshot(seed, creds)
    lost = [k for k, v in before.items() if not v[2] and after.get(k) != v]
    assert not lost, f"{len(lost)} keys lost or changed, e.g. {lost[:3]}"
    changed = [k for k, v in before.items() if v[2] and k in after and after[k][:2] != v[:2]]
    assert not changed, f"TTL keys changed: {changed[:3]}"
