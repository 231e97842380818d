"""Shared fixtures: real sandbox clusters on loopback ports, started once per module and always stopped."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from runbook_lib.sandbox import Sandbox, SandboxLayout

ROOT = Path(__file__).resolve().parents[1]
PORT_OFFSET = int(os.environ.get("RUNBOOK_TEST_PORT_OFFSET", "0"))
"""Added to every test cluster's ports, so that two checkouts can run integration tests side by side."""


def start_sandbox(root: Path, port: int, keys: int, **layout) -> Sandbox:
    """A sandbox whose params.yaml moves at the fast preset with gates no busy test machine trips."""
    sb = Sandbox(root)
    sb.up(SandboxLayout(port=port, **layout), keys=keys, progress=False)
    loosen(sb.root / "params.yaml")
    return sb


def loosen(path: Path) -> None:
    """Rewrite a params file for tests that prove something other than latency and client behaviour: fast preset,
    loose gates, and no stock-client probe worker (a fast preset on a loaded 2-core machine can still give stock
    redis-py an ASK to a master it has not learned yet; test_traffic_accounting and the demo measure that)."""
    data = yaml.safe_load(path.read_text())
    data["migration"] = {**data.get("migration", {}), "preset": "fast", "max_slots_per_s": 0.0}
    data["gates"] = {**data.get("gates", {}), **LOOSE_GATES, "pause_after_s": 600.0}
    data["probe"] = {**data.get("probe", {}), "stock_processes": 0}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def run_expansion(sandbox: Sandbox, runbook_bin: str, name: str):
    """`runbook run` of the whole expansion on a sandbox's own params into `<sandbox's folder>/<name>`; returns
    (the finished process, the run folder)."""
    import subprocess
    out = sandbox.root.parent / name
    proc = subprocess.run([runbook_bin, "run", "--params", str(sandbox.root / "params.yaml"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    return proc, out


@pytest.fixture(scope="session")
def redis_cli() -> str:
    found = os.environ.get("RUNBOOK_REDIS_CLI") or shutil.which("redis-cli")
    if not found:
        pytest.fail("redis-cli not found; run `make test`, which installs it")
    return found


@pytest.fixture(scope="session")
def runbook_bin() -> str:
    found = shutil.which("runbook", path=str(Path(os.sys.executable).parent)) or shutil.which("runbook")
    assert found, "the runbook console script is not installed; run `make test`"
    return found


LOOSE_GATES = {"cpu_pct": 100.0, "avg_latency_ms": 1000.0, "p99_latency_ms": 1000.0, "latency_budget_pct": 10000.0,
               "baseline_s": 3.0, "max_downtime_ms": 60000.0,
               "latency_floor_ms": 1000.0}
"""Gates no busy test machine trips, for tests that prove something other than latency (ACL, TLS)."""


def files_holding(secret: str, roots: list[Path]) -> list[str]:
    """Every file under `roots` (files or folders) whose bytes contain the secret, plain or JSON-escaped."""
    needles = {secret.encode(), json.dumps(secret)[1:-1].encode()}
    hits = []
    for root in roots:
        for path in ([root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())):
            data = path.read_bytes()
            if any(n in data for n in needles):
                hits.append(str(path))
    return hits


def cluster_layout(ports: list[int], creds) -> dict[int, dict]:
    """Every node's own CLUSTER NODES, reduced to what a change would alter: ids, roles, masters, epochs, slots."""
    from runbook_lib.cluster.connection import node_client
    from runbook_lib.cluster.topology import read_view
    layout = {}
    for port in ports:
        view = read_view(node_client(f"127.0.0.1:{port}", creds), str(port))
        layout[port] = {e.id: (e.address, sorted(e.flags - {"myself"}), e.master_id, e.config_epoch,
                               sorted(e.slots), sorted(e.migrating.items()), sorted(e.importing.items()))
                        for e in view.entries.values()}
    return layout
