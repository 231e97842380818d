"""Shared fixtures: real sandbox clusters on loopback ports, started once per module (or once per session for the
expanded clusters of tests/expanded.py) and always stopped; the port allocator; how tests share the machine."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from runbook_lib.sandbox import Sandbox, SandboxLayout

ROOT = Path(__file__).resolve().parents[1]
PORT_OFFSET = int(os.environ.get("RUNBOOK_TEST_PORT_OFFSET", "0"))
"""Added to every test cluster's ports, so that two checkouts can run integration tests side by side."""
FIRST_PORT = 7000
BUS_SHIFT = 10000
"""Redis Cluster's bus port is the data port + 10000."""
EPHEMERAL_PORTS = 32768
"""Linux hands out client ports from here up: no server port, nor its bus port, may be at or above it."""
SANDBOX_PORTS = len(SandboxLayout().all_ports)
pytest_plugins = ["tests.expanded"]
"""Ports of the default sandbox (3+3 and the new master and replica)."""


@dataclass
class PortAllocator:
    """Blocks of consecutive ports from this process's share of [7000 + offset, limit). xdist worker k of n gets the
    k-th of n equal shares, so no two workers ever hand out the same port (nor the same multi-host namespaces and
    subnets, which sandbox/network.py derives from the port). `limit` keeps every bus port (+10000) below the
    ephemeral range and above every data port handed out, so a data port is never another node's bus port."""

    offset: int = 0
    worker: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        first = FIRST_PORT + self.offset
        share = (min(EPHEMERAL_PORTS - BUS_SHIFT, first + BUS_SHIFT) - first) // self.workers
        if share < 2 * SANDBOX_PORTS:
            raise ValueError(f"RUNBOOK_TEST_PORT_OFFSET={self.offset} leaves {share} ports per worker below "
                             f"{EPHEMERAL_PORTS - BUS_SHIFT}: choose a smaller offset or fewer workers")
        self.next = first + self.worker * share
        self.end = self.next + share

    def take(self, count: int) -> int:
        """The first of `count` consecutive ports no other call (in any worker of this run) returns."""
        if self.next + count > self.end:
            raise ValueError(f"this worker's ports end at {self.end - 1}: fewer ports per module, or fewer workers")
        port, self.next = self.next, self.next + count
        return port

    @classmethod
    def from_env(cls) -> "PortAllocator":
        """This process's allocator: RUNBOOK_TEST_PORT_OFFSET, and the xdist worker's number and count."""
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        return cls(PORT_OFFSET, int(worker.removeprefix("gw")), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


PORTS = PortAllocator.from_env()


def port_block(count: int = SANDBOX_PORTS) -> int:
    """The first of `count` ports for one module's (or one fixture's) clusters; call it at import time, once per
    cluster that may be up at the same time as another."""
    return PORTS.take(count)


def start_sandbox(root: Path, port: int, keys: int, **layout) -> Sandbox:
    """A sandbox whose params.yaml moves at the fast preset with gates no busy test machine trips."""
    sb = Sandbox(root)
    sb.up(SandboxLayout(port=port, **layout), keys=keys, progress=False)
    loosen(sb.root / "params.yaml")
    return sb


def module_sandbox(port: int, keys: int, **layout):
    """A module-scoped `sandbox` fixture: `start_sandbox` on `port` with `keys` keys, stopped after the module."""
    @pytest.fixture(scope="module")
    def sandbox(tmp_path_factory) -> Iterator[Sandbox]:
        sb = start_sandbox(tmp_path_factory.mktemp("sandbox") / "sandbox", port, keys, **layout)
        yield sb
        sb.down()
    return sandbox


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


EXCLUSIVE = "exclusive"
"""Marker of tests that measure latency. Under xdist they form one group, which starts the run on one worker while
the other workers wait for it to finish: no other test loads the machine meanwhile, and nobody waits for a long
test to end before an exclusive one can start."""
EXCLUSIVE_WAIT_S = 3600.0
"""How long a test waits for the exclusive tests before it gives up (a worker that died in one never reports it)."""
EXCLUSIVE_TESTS = pytest.StashKey[list[str]]()
RUN_DIR = "RUNBOOK_TEST_RUN_DIR"
"""Environment variable naming the folder the xdist controller and its workers share for one run: the groups of
tests the workers collected, and which exclusive tests are done."""
GROUPS_FILE = "groups.json"


def pytest_configure(config: pytest.Config) -> None:
    """Register the group marker; on an xdist controller, make the run's shared folder (workers inherit the
    environment, so they find it)."""
    config.addinivalue_line("markers", "xdist_group(name): tests that run on one xdist worker, one after another")
    if config.getoption("numprocesses", default=None) and not hasattr(config, "workerinput"):
        os.environ[RUN_DIR] = tempfile.mkdtemp(prefix="runbook-tests-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and os.environ.get(RUN_DIR):
        shutil.rmtree(os.environ.pop(RUN_DIR), ignore_errors=True)


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[EXCLUSIVE_TESTS] = [item.nodeid for item in session.items
                                             if item.get_closest_marker(EXCLUSIVE)]


def _done_marker(nodeid: str) -> Path | None:
    """The file that says an exclusive test is done, on an xdist worker (None elsewhere)."""
    folder = os.environ.get(RUN_DIR)
    if not folder or "PYTEST_XDIST_WORKER" not in os.environ:
        return None
    return Path(folder) / f"done-{hashlib.sha1(nodeid.encode()).hexdigest()}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """An exclusive test says when it is done; any other test first waits until every exclusive test is."""
    marker = _done_marker(item.nodeid)
    if marker is None:
        return (yield)
    if item.get_closest_marker(EXCLUSIVE):
        try:
            return (yield)
        finally:
            marker.touch()
    pending = [m for m in map(_done_marker, item.config.stash.get(EXCLUSIVE_TESTS, [])) if m]
    deadline = time.monotonic() + EXCLUSIVE_WAIT_S
    while not all(m.exists() for m in pending):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the exclusive tests did not finish within {EXCLUSIVE_WAIT_S:.0f} s")
        time.sleep(0.5)
    return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the tests as xdist should start their groups and, on an xdist worker, write down each test's group
    (`_group`) for the controller's scheduler. Exclusive tests come first, while the other workers have started
    nothing long that they would wait for; then the long groups (marked `slow`, or an expanded cluster), so that
    none of them ends the run alone; then the other cluster tests; the quick unit tests fill the end."""
    groups = {item.nodeid: _group(item) for item in items}
    items.sort(key=lambda item: _start_order(item, groups[item.nodeid]))
    folder = os.environ.get(RUN_DIR)
    if folder and "PYTEST_XDIST_WORKER" in os.environ:
        path = Path(folder) / GROUPS_FILE
        partial = path.with_name(f"{GROUPS_FILE}.{os.environ['PYTEST_XDIST_WORKER']}")
        partial.write_text(json.dumps(groups))
        os.replace(partial, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's scope scheduling with the groups the workers wrote: a group's tests run on one worker, one after
    another, in collection order; groups go to whichever worker is free. (xdist's own `loadgroup` cannot be used:
    it renames items through an attribute pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        groups: dict[str, str] = {}

        def _split_scope(self, nodeid: str) -> str:
            if not self.groups:
                self.groups = json.loads((Path(os.environ[RUN_DIR]) / GROUPS_FILE).read_text())
            return self.groups[nodeid]

    return GroupScheduling(config, log)


def _start_order(item: pytest.Item, group: str) -> int:
    from tests.expanded import FIXTURES
    if item.get_closest_marker(EXCLUSIVE):
        return 0
    if item.get_closest_marker("slow") or group in FIXTURES.values():
        return 1
    return 2 if _is_cluster_test(item) else 3


def _is_cluster_test(item: pytest.Item) -> bool:
    return item.nodeid.startswith(("tests/integration/", "tests/browser/"))


def _group(item: pytest.Item) -> str:
    """One group for the exclusive tests; else the test's xdist_group mark, or the group of the expanded cluster it
    uses (tests/expanded.py); else its file, or the test itself when it is a cluster test whose fixtures are all
    function-scoped or cheap session-wide ones (a binary's path), so that it may run beside the rest of its file."""
    from tests.expanded import FIXTURES
    if item.get_closest_marker(EXCLUSIVE):
        return EXCLUSIVE
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        return str(mark.args[0] if mark.args else mark.kwargs["name"])
    module = item.nodeid.split("::")[0]
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures is None:
        return module
    shared = [FIXTURES[name] for name in fixtures.names_closure if name in FIXTURES]
    if shared:
        return shared[0]
    if not _is_cluster_test(item):
        return module
    scopes = {d.scope for name in fixtures.names_closure for d in fixtures.name2fixturedefs.get(name, ())}
    return item.nodeid if scopes <= {"function", "session"} else module
