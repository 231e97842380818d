"""The fault matrix: a crash at every failpoint the code has (tests/failpoints.py enumerates them), then resume, while
stock redis-py clients keep overwriting keys of the slots being moved; and masters killed at a sample of points.

One sandbox serves the whole matrix. It is expanded once (3+3 -> 4+4) before the first point; each point then gives
`K` fresh slots back from the new shard to an old one (the donors take turns; the seed's shard never gives, so the
seed stays a master), which makes the plan exactly those `K` slots again: the point moves them towards the new
shard with slots in flight of 2 (two groups), 5 keys per MIGRATE (several drain rounds per group). Per point:

1. the `K` slots are filled with mixed data (strings, hashes, lists, sets, zsets, some with a TTL), and writer
   threads (tests/integration/writers.py) start overwriting keys of those slots;
2. the migration runs in its own process (tests/integration/matrix_run.py: 40_migrate's `sections.migration.run`) with
   RUNBOOK_FAILPOINT set: it must die by SIGKILL (-9), and the journal's last transition entry must be the one the
   code records before that point. Points the move does not pass are reached by their own set-up: `_close` by a
   resume after a kill with only IMPORTING set (the resume is the process killed), `_rescue` with keys stranded on a
   third master, `_resolve_busy` with an identical copy of a key on the target;
3. `runbook resume` finishes (exit 0), after a second kill with --take-over-lock;
4. checks: 60_validate's health checks (reachable, none failed, covered, agreeing, no open slot, a replica each),
   no key on a master that does not own its slot, the plan done, every pre-existing key of the slots with its
   type, value and TTL presence, stranded or doubled keys where they belong, and the writers' model: every key holds
   its last acknowledged write or a later ambiguous one.

The master kills run the same way but the process is not killed: at the point it pauses the source's (or target's)
writes, waits for its replica to have them, SIGKILLs the master and goes on; the replica is promoted, the old master
restarted (it rejoins as the replica), then resume and the same checks. The last test compares the whole keyspace
with the picture taken before the first point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import yaml

from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import current_plan, migrate
from runbook_lib.cluster.mover import Mover
from runbook_lib.cluster.repair import repair
from runbook_lib.cluster.topology import misplaced_keys, observe
from runbook_lib.config import Migration
from runbook_lib.exceptions import CheckFailed, MigrationError
from runbook_lib.sections.validate import health
from tests.conftest import ROOT, port_block, start_sandbox
from tests.failpoints import Failpoint, analyse
from tests.integration.faults import assert_sound, cli, data_snapshot, params_variant, tag_for_slot
from tests.integration.test_recovery import joined, restart, wait_promoted
from tests.integration.writers import Writers, key_names

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
NEW, NEW_REPLICA = f"127.0.0.1:{PORT + 6}", f"127.0.0.1:{PORT + 7}"
KEYS = 2000
"""Sandbox keys (the expansion before the first point moves them all once)."""
K = 4
"""Slots each point moves: with 2 in flight, two groups of one source worker."""
FILL = 24
"""Pre-existing keys written into each slot of a point: 5 keys per MIGRATE makes 5 drain rounds."""
WRITER_KEYS = 6
"""Writer keys per slot of a point."""
PER_ROUND = {"_drain", "migrate"}
"""Functions a move passes once per drain round (`Transitions._drain`, `Rounds.migrate`): their points are crashed at
the 2nd hit too (keys then on both sides of the slot), as are points inside a loop."""
SCENARIOS = {"_open": "move", "_drain": "move", "migrate": "move", "_handover": "move", "_close": "close",
             "_rescue": "rescue", "_resolve_busy": "busy"}
"""How the matrix reaches the points of each function (by method name: `Transitions._open`, `Rounds.migrate`, ...);
a point in a function not named here fails its test."""
WRITER_PREFIX = "w:"

ANALYSIS = analyse()
POINTS = ANALYSIS.failpoints


def _first(method: str, predicate) -> Failpoint | None:
    return next((p for p in POINTS if p.method == method and predicate(p)), None)


IMPORTING_POINT = _first("_open", lambda p: "SETSLOT IMPORTING" in p.last_commands and not p.conditional)
"""After the target's IMPORTING is set and before the source's MIGRATING: nothing can have moved yet."""
MIGRATED_POINT = _first("_drain", lambda p: any(c.startswith("MIGRATE") for c in p.sent))
"""After a MIGRATE round."""
HANDOVER_POINT = _first("_handover", lambda p: not any("SETSLOT NODE" in c for c in p.sent))
"""Before the hand-over's first SETSLOT NODE."""
OWNER_TOLD_POINTS = {p.name for p in POINTS if p.method == "_open" and p.conditional
                     and p.last_commands == ("SETSLOT NODE",)}
"""Passed only when the target still believes a master that failed over owns the slot (it ignored the claim of the
promoted replica while it was importing): reached by a resume after the source failed over mid-slot."""


RESCUE_BUSY_POINTS = {p.name for p in POINTS if p.method == "_rescue" and p.last_commands == ("self._resolve_busy()",)}
"""Passed only when a rescue's MIGRATE meets a copy of a stranded key on the owner: reached by planting both."""
CLOSE_FIRST_POINTS = {p.name for p in POINTS if p.method == "_close" and p.last_commands == ("SETSLOT STABLE",)
                      and p.conditional}
"""Between clearing a MIGRATING side and an IMPORTING side of one close: a repair of a move never closes a MIGRATING
source (an ASK may be on its way: it finishes the move instead), so only a close of markers left on a shard that holds
every key passes it; `tests/integration/test_mover.py` and the slot model cover that path, not the matrix."""


def _scenario(p: Failpoint) -> str | None:
    if p.name in OWNER_TOLD_POINTS:
        return "owner_told"
    if p.name in RESCUE_BUSY_POINTS:
        return "rescue_busy"
    return SCENARIOS.get(p.method)


def _cases():
    out = []
    for p in POINTS:
        repeat = (p.method in PER_ROUND or p.in_loop) and _scenario(p) in ("move", "rescue", "rescue_busy")
        marks = [pytest.mark.skip(reason=CLOSE_FIRST_POINTS.__doc__ or "")] if p.name in CLOSE_FIRST_POINTS else []
        for n in ([1, 2] if repeat else [1]):
            out.append(pytest.param(p, n, id=p.name if n == 1 else f"{p.name}:{n}", marks=marks))
    return out
FULL = os.environ.get("RUNBOOK_FAULT_MATRIX", "") == "full"
"""RUNBOOK_FAULT_MATRIX=full kills both masters at each sampled point; by default one victim per point (CI size)."""
KILLS = [(IMPORTING_POINT, 1, "target"), (MIGRATED_POINT, 2, "source"), (HANDOVER_POINT, 1, "target")]
if FULL:
    KILLS += [(IMPORTING_POINT, 1, "source"), (MIGRATED_POINT, 2, "target"), (HANDOVER_POINT, 1, "source")]


@dataclass
class Point:
    """One point's slots, where they go, what they held before, and its run folder."""

    name: str
    slots: list[int]
    source: str
    target: str
    run_dir: Path
    params: Path
    before: dict = field(default_factory=dict)
    planted: dict = field(default_factory=dict)
    """Keys the set-up placed by hand (stranded, doubled): key -> value the owner must end with."""
    writers: Writers | None = None
    log: list[str] = field(default_factory=list)
    said: str = ""
    """What the last resume printed."""


class Matrix:
    """The shared sandbox and what each point needs of it."""

    def __init__(self, sb, root: Path) -> None:
        self.sb, self.root = sb, root
        self.creds = sb.credentials()
        self.settings = Migration(preset="fast", warmup_slot=False, client_learn_wait_s=0.0)
        self.reset_journal = Journal(root / "reset" / "journal.jsonl")
        self.used: set[int] = set()
        self.turn = 0
        self.params = params_variant(sb, "matrix", gates={"baseline_s": 1.0}, slots_per_batch=K, slots_in_flight=2,
                                     keys_per_migrate=5, warmup_slot=False, client_learn_wait_s=0.0,
                                     convergence_timeout_s=60.0)
        data = yaml.safe_load(self.params.read_text())
        data["probe"] = {**data.get("probe", {}), "enabled": False}  # the writers are the clients here
        self.params.write_text(yaml.safe_dump(data, sort_keys=False))
        self.results: list[dict] = []
        self.healed: list[str] = []
        """What `heal` had to put right after a failed point."""
        self.dirty = True
        """Whether the cluster may need `heal` (a point began and its checks have not passed)."""

    # -- the cluster between points -------------------------------------------------------------------------------

    def topo(self):
        return observe(SEED, self.creds)

    def target_shard(self, topo) -> str:
        entry = topo.by_address(NEW)
        return entry.id if entry.is_master else entry.master_id

    def heal(self) -> None:
        """Whatever an earlier point left (a node down, an open slot, stranded keys) is put right, or the matrix
        cannot go on."""
        alive = self.sb.running_pids()
        for port in self.sb.state()["ports"]:
            if port not in alive:
                restart(self.sb, f"127.0.0.1:{port}", self.creds)
        if not self.dirty:
            return  # the last point's checks passed: nothing to put right
        _wait_healthy(self.creds, 20)
        topo = self.topo()
        if topo.open_slots() or misplaced_keys(topo, self.creds):
            self.healed.append(f"{len(topo.open_slots())} open slot markers, stranded keys in "
                               f"{sorted(misplaced_keys(topo, self.creds))}")
            self.tell_owners()
            try:
                repair(topo, self.creds, self.reset_journal, self.settings, apply=True, foreign=True)
            except (MigrationError, CheckFailed):
                # a key on both sides with different values (the run stopped for a human): the owner's copy is the
                # one clients read, so the importing side's copy goes, as an operator would decide
                self.drop_importers_copies()
                self.tell_owners()
                repair(self.topo(), self.creds, self.reset_journal, self.settings, apply=True, foreign=True)
            topo = self.topo()
            assert not topo.open_slots() and not misplaced_keys(topo, self.creds), \
                "an earlier point left the cluster in a state repair cannot settle; the matrix stops here"
        left = current_plan(topo, self.creds, [NEW], self.settings)
        if left.moves:
            self.healed.append(f"moved {len(left.moves)} slots an earlier point left to move")
            migrate(topo, self.creds, [NEW], self.settings, self.reset_journal, progress=False)

    def tell_owners(self) -> None:
        """Tell every master that disagrees about a slot's owner (an importing node ignores the claims of a promoted
        replica; it may see the slot unassigned and its cluster_state fail) the owner the masters claim."""
        topo = self.topo()
        owners = topo.owners()
        for view in topo.views.values():
            if not view.myself.is_master:
                continue
            wrong = [slot for slot, seen in enumerate(view.owners()) if owners[slot] and seen != owners[slot]]
            if wrong:
                pipe = node_client(view.myself.address, self.creds).pipeline(transaction=False)
                for slot in wrong:
                    pipe.execute_command("CLUSTER", "SETSLOT", slot, "NODE", owners[slot])
                pipe.execute(raise_on_error=False)
                self.healed.append(f"told {view.myself.address} the owner of slots {wrong[:8]}")

    def drop_importers_copies(self) -> None:
        topo = self.topo()
        owners = topo.owners()
        for view in topo.views.values():
            me = view.myself
            if not me.is_master:
                continue
            client = node_client(me.address, self.creds)
            owner_of = {}
            for slot in me.importing:
                owner_of[slot] = node_client(topo.nodes[owners[slot]].address, self.creds)
            for slot, owner in owner_of.items():
                for key in client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100000):
                    try:
                        on_owner = owner.exists(key)
                    except redis.ResponseError:  # ASK: the owner is migrating the slot and does not hold the key
                        on_owner = 0
                    if on_owner:
                        pipe = client.pipeline(transaction=False)
                        pipe.execute_command("ASKING")
                        pipe.delete(key)
                        pipe.execute()
                        self.healed.append(f"deleted the importing copy of {key!r} (slot {slot}) on {me.address}")

    def next_point(self, name: str) -> Point:
        """Give `K` fresh slots of the new shard back to the next donor: the plan is then exactly those slots."""
        started = time.time()
        self.heal()
        topo = self.topo()
        target = self.target_shard(topo)
        owned = topo.slots_by_master()
        seed_shard = topo.by_address(SEED)
        seed_shard = seed_shard.id if seed_shard.is_master else seed_shard.master_id
        donors = sorted((m.id for m in topo.masters() if m.id not in (target, seed_shard)),
                        key=lambda i: min(owned[i]))
        donor = donors[self.turn % len(donors)]
        self.turn += 1
        top = max(owned[donor])
        slots = sorted(s for s in owned[target] if s > top and s not in self.used)[:K]
        assert len(slots) == K, "the new shard has no fresh slots left above the donor's"
        self.used.update(slots)
        mover = Mover(topo, self.creds, self.settings, self.reset_journal)
        mover.drive(slots, target, donor)
        plan = current_plan(self.topo(), self.creds, [NEW], self.settings)
        assert sorted(m.slot for m in plan.moves) == slots and {m.source for m in plan.moves} == {donor}, plan
        run_dir = self.root / "runs" / name.replace(":", "-")
        run_dir.mkdir(parents=True)
        baseline = {"pre_expansion": True, "note": "fault matrix point", "masters": []}
        (run_dir / "baseline.json").write_text(json.dumps(baseline))
        point = Point(name, slots, donor, target, run_dir, self.params)
        self.fill(point)
        point.before = self.snapshot(slots)
        point.log.append(f"set-up {time.time() - started:.1f}s")
        self.dirty = True
        return point

    def fill(self, point: Point) -> None:
        owner = node_client(self.address(point.source), self.creds)
        pipe = owner.pipeline(transaction=False)
        for slot in point.slots:
            tag = tag_for_slot(slot)
            for i in range(FILL):
                key, kind = f"m:{{{tag}}}:{point.name}:{i}", i % 6
                if kind == 0:
                    pipe.set(key, f"value-{slot}-{i}")
                elif kind == 1:
                    pipe.set(key, f"ttl-{slot}-{i}", ex=3600)
                elif kind == 2:
                    pipe.hset(key, mapping={f"f{j}": str(j * i) for j in range(5)})
                elif kind == 3:
                    pipe.rpush(key, *[str(j) for j in range(8)])
                elif kind == 4:
                    pipe.sadd(key, *[f"m{j}" for j in range(6)])
                else:
                    pipe.zadd(key, {f"z{j}": float(j) for j in range(6)})
        pipe.execute()

    def roles(self) -> str:
        """Who replicates whom now, for failure messages."""
        topo = self.topo()
        owned = topo.slots_by_master()
        return "masters: " + "; ".join(
            f"{m.address} ({len(owned.get(m.id, ()))} slots, replicas: "
            f"{', '.join(r.address for r in topo.replicas_of(m.id)) or 'none'})" for m in topo.masters())

    def address(self, node_id: str) -> str:
        return self.topo().nodes[node_id].address

    def snapshot(self, slots: list[int]) -> dict[str, tuple]:
        """Type, value and TTL presence of every key of these slots, found on any master, read through a cluster
        client (writer keys left out: the writers' model judges them)."""
        topo = self.topo()
        names = set()
        for m in topo.masters():
            client = node_client(m.address, self.creds)
            for slot in slots:
                names.update(k.decode() for k in client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100000))
        client = cluster_client([m.address for m in topo.masters()], self.creds)
        readers = {"string": client.get, "hash": client.hgetall, "list": lambda k: client.lrange(k, 0, -1),
                   "set": lambda k: sorted(client.smembers(k)),
                   "zset": lambda k: client.zrange(k, 0, -1, withscores=True)}
        out = {}
        try:
            for key in sorted(n for n in names if not n.startswith(WRITER_PREFIX)):
                kind = client.type(key)
                out[key] = ("none", None, False) if kind == "none" else (kind, readers[kind](key),
                                                                         client.pttl(key) != -1)
        finally:
            client.close()
        return out

    def writers(self, point: Point, slots: list[int] | None = None) -> Writers:
        keys = key_names(slots or point.slots, WRITER_KEYS, tag_for_slot,
                         prefix=WRITER_PREFIX + point.name.replace(":", "-"))
        startup = [f"127.0.0.1:{p}" for p in self.sb.state()["ports"]]
        point.writers = Writers(startup, self.creds.password, keys, threads=3, writes_per_s=150.0, max_seconds=400.0)
        return point.writers.start()

    def fail_over(self, point: Point, node_id: str) -> None:
        """SIGKILL a master (its writes paused, its replica caught up first), wait for its replica's promotion,
        restart it (it rejoins as the replica)."""
        from tests.integration.matrix_run import pause_and_kill
        topo = self.topo()
        dead = topo.nodes[node_id]
        heir = topo.replicas_of(node_id)[0]
        pause_and_kill(dead.address, heir.address, self.sb.running_pids()[int(dead.address.rsplit(":", 1)[1])],
                       self.creds)
        wait_promoted(self.creds, heir.address)
        restart(self.sb, dead.address, self.creds)
        _wait_replica(self.creds, dead.address, 60)
        point.log.append(f"master {dead.address} killed, {heir.address} promoted, {dead.address} back as its replica")

    # -- the processes --------------------------------------------------------------------------------------------

    def run(self, point: Point, failpoint: str | None = None, kill: list[str] | None = None) -> subprocess.Popen:
        env = dict(os.environ)
        env.pop("RUNBOOK_FAILPOINT", None)
        if failpoint:
            env["RUNBOOK_FAILPOINT"] = failpoint
        return subprocess.Popen([sys.executable, "-m", "tests.integration.matrix_run", "--params", str(point.params),
                                 "--run-dir", str(point.run_dir), "--max-batches", "1", *(kill or [])],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def resume(self, point: Point, failpoint: str | None = None, take_over: bool = False):
        started = time.time()
        proc = cli("resume", "--params", str(point.params), "--run-dir", str(point.run_dir),
                   *(["--take-over-lock"] if take_over else []), failpoint=failpoint, timeout=300)
        point.log.append(f"resume{' (' + failpoint + ')' if failpoint else ''}: exit {proc.returncode} in "
                         f"{time.time() - started:.1f}s")
        point.said = (proc.stdout + proc.stderr)[-2500:]
        return proc

    # -- the checks -----------------------------------------------------------------------------------------------

    def check(self, point: Point) -> None:
        started = time.time()
        tail = journal_tail(point.run_dir) + "\nthe last resume said:\n" + point.said + "\n" + self.roles()
        _wait_healthy(self.creds, 30)
        topo = self.topo()
        failed = [c for c in health(topo) if c.status == "fail"]
        assert not failed, f"{point.name}: unhealthy after resume: {failed}\n{tail}"
        assert misplaced_keys(topo, self.creds) == {}, f"{point.name}: keys stranded on a non-owner\n{tail}"
        plan = current_plan(topo, self.creds, [NEW], self.settings)
        assert not plan.moves, f"{point.name}: resume left {len(plan.moves)} slots of the plan unmoved\n{tail}"
        still_open = Journal(point.run_dir / "journal.jsonl").open_slots()
        assert not still_open, f"{point.name}: the journal still lists slots open: {sorted(still_open)}\n{tail}"
        target = self.target_shard(topo)
        owners = topo.owners()
        assert all(owners[s] == target for s in point.slots), f"{point.name}: slots not on the new shard\n{tail}"
        after = self.snapshot(point.slots)
        lost = {k: (v, after.get(k)) for k, v in point.before.items() if after.get(k) != v}
        assert not lost, (f"{point.name}: {len(lost)} pre-existing keys lost or changed, e.g. "
                          f"{list(lost.items())[:3]}\n{tail}")
        if point.planted:
            client = cluster_client([m.address for m in topo.masters()], self.creds)
            try:
                wrong = {k: (v, client.get(k)) for k, v in point.planted.items() if client.get(k) != v}
            finally:
                client.close()
            assert not wrong, f"{point.name}: keys placed by the set-up are not with the owner: {wrong}\n{tail}"
        point.writers.stop()
        report = point.writers.check()
        assert not point.writers.failures, point.writers.failures
        point.log.append(f"writers: {report}")
        unusual = {k: v for k, v in point.writers.samples.items() if k not in ("ConnectionError", "TimeoutError")}
        if unusual:
            point.log.append(f"writer errors: {unusual}")
        assert not report.lost, f"{point.name}: writers lost writes: {report}\n{tail}"
        assert report.acked > 0, f"{point.name}: no write was acknowledged: {report}"
        point.log.append(f"checks {time.time() - started:.1f}s")
        self.results.append({"point": point.name, "slots": point.slots, "log": point.log})
        self.dirty = False
        print(f"{point.name}: slots {point.slots} " + "; ".join(point.log))


def journal_tail(run_dir: Path, n: int = 10) -> str:
    path = run_dir / "journal.jsonl"
    if not path.exists():
        return "(no journal)"
    entries = list(Journal(path).entries())[-n:]
    keep = ("slot", "slots", "source", "target", "action", "reason", "error", "keys", "holder", "owner")
    return "journal tail:\n" + "\n".join(
        "  " + e["event"] + " " + json.dumps({k: e[k] for k in keep if k in e}, default=str)[:200] for e in entries)


def last_transition(run_dir: Path) -> str:
    found = ""
    for e in Journal(run_dir / "journal.jsonl").entries():
        if e["event"] in ANALYSIS.events:
            found = e["event"]
    return found


def _wait_healthy(creds, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            topo = observe(SEED, creds)
            failed = [c for c in health(topo) if c.status == "fail"]
            links = all(node_client(r.address, creds).info("replication").get("master_link_status") == "up"
                        for m in topo.masters() for r in topo.replicas_of(m.id))
            if not failed and links:
                return
        except Exception as e:  # a node still coming back
            failed = [repr(e)]
        if time.time() > deadline:
            return
        time.sleep(0.5)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return -999, out + err
    return proc.returncode, out + err


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault-matrix")
    sb = start_sandbox(root / "sandbox", PORT, KEYS)
    try:
        creds = sb.credentials()
        m = Matrix(sb, root)
        joined(sb, PORT, m.reset_journal)
        m.initial = data_snapshot(SEED, creds)
        started = time.time()
        migrate(observe(SEED, creds), creds, [NEW], m.settings, m.reset_journal, progress=False)
        m.expansion_s = time.time() - started
        yield m
        (root / "results.json").write_text(json.dumps({"points": m.results, "healed": m.healed}, indent=2))
    finally:
        from runbook_lib.watch import watchers
        for run_dir in sorted((root / "runs").glob("*")):
            watchers.stop_all(run_dir)
        sb.down()


# -- the points ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("point,hit", _cases())
def test_crash_at_the_point_then_resume(matrix, point: Failpoint, hit: int):
    scenario = _scenario(point)
    if scenario is None:
        pytest.fail(f"no scenario reaches failpoints in {point.function} ({point.name}): add one to SCENARIOS in "
                    f"{Path(__file__).name}")
    name = point.name if hit == 1 else f"{point.name}:{hit}"
    p = matrix.next_point(name)
    if scenario in ("rescue", "rescue_busy"):
        plant_stranded(matrix, p, copies_on_owner=scenario == "rescue_busy")
    elif scenario == "busy":
        plant_double(matrix, p)
    # owner_told fails the source over with the first group's slots half moved: writers there would re-create moved
    # keys on the promoted source (the failover defect the master-kill cases show); they write the second group's
    matrix.writers(p, p.slots[2:] if scenario == "owner_told" else None)
    try:
        if scenario in ("close", "owner_told"):
            prep = IMPORTING_POINT if scenario == "close" else MIGRATED_POINT
            assert prep is not None, f"no point to leave the slots open for {name} (see IMPORTING_POINT, MIGRATED_POINT)"
            code, out = _finish(matrix.run(p, failpoint=prep.name))
            assert code == -9, f"the run was to die at {prep.name}: exit {code}\n{out}"
            p.log.append(f"run killed at {prep.name}")
            if scenario == "owner_told":
                matrix.fail_over(p, p.source)
            killed = matrix.resume(p, failpoint=name)
            code, out = killed.returncode, killed.stdout + killed.stderr
            p.log.append(f"resume killed at {name}")
        else:
            started = time.time()
            code, out = _finish(matrix.run(p, failpoint=name))
            p.log.append(f"run killed at {name}: exit {code} in {time.time() - started:.1f}s")
        assert code == -9, f"the process was to die by SIGKILL at {name}: exit {code}\n{out[-3000:]}\n" \
                           f"{journal_tail(p.run_dir)}"
        last = last_transition(p.run_dir)
        called = point.last_commands and point.last_commands[-1].startswith("self.")
        if any(point.records) and not called:  # after a call, the called method's own entries may come last
            assert last in point.records, (f"the journal's last transition entry is {last!r}; the code records "
                                           f"{point.records} before {point.name}\n{journal_tail(p.run_dir)}")
        p.log.append(f"journal stops at {last}")
        resumed = matrix.resume(p, take_over=scenario in ("close", "owner_told"))
        assert resumed.returncode == 0, (f"resume failed:\n{resumed.stdout}\n{resumed.stderr}\n"
                                         f"{journal_tail(p.run_dir)}\n{_seen_lost(p)}\n{_views(matrix)}")
        matrix.check(p)
    finally:
        if p.writers is not None:
            p.writers.stop()


def plant_stranded(matrix: Matrix, p: Point, copies_on_owner: bool = False) -> None:
    """Keys of the point's first slot on a third master (neither source nor target), with no marker left: the mover
    must rescue them to the owner before it moves the slot; with `copies_on_owner` the owner holds identical copies,
    so each rescue MIGRATE meets BUSYKEY and the holder's copies are settled by comparison."""
    topo = matrix.topo()
    third = next(m for m in topo.masters() if m.id not in (p.source, p.target))
    slot, tag = p.slots[0], tag_for_slot(p.slots[0])
    client = node_client(third.address, matrix.creds)
    client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", p.source)
    for i in range(12):
        key = f"m:{{{tag}}}:stranded:{i}"
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.set(key, f"stranded-{i}")
        pipe.execute()
        p.planted[key] = f"stranded-{i}"
        if copies_on_owner:
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("ASKING")
            pipe.execute_command("DUMP", key)
            node_client(matrix.address(p.source), matrix.creds).restore(key, 0, pipe.execute()[1])
    client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    assert slot in misplaced_keys(matrix.topo(), matrix.creds)


def plant_double(matrix: Matrix, p: Point) -> None:
    """An identical copy (same DUMP payload) of some keys of the point's first slot on the target, no marker left:
    moving them meets BUSYKEY, settled by comparing the copies."""
    slot, tag = p.slots[0], tag_for_slot(p.slots[0])
    source = node_client(matrix.address(p.source), matrix.creds)
    target = node_client(matrix.address(p.target), matrix.creds)
    keys = [f"m:{{{tag}}}:{p.name}:{i}" for i in (0, 6, 12)]  # plain strings (kind 0 of `fill`)
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", p.source)
    for key in keys:
        payload = source.dump(key)
        pipe = target.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.execute_command("RESTORE", key, 0, payload)
        pipe.execute()
        p.planted[key] = source.get(key).decode()
    target.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


# -- masters killed at a sample of points --------------------------------------------------------------------------


SOURCE_FAILOVER_MID_SLOT = pytest.mark.xfail(strict=False, reason=(
    "open defect: the source's replica, promoted mid-slot, has no MIGRATING marker, so clients re-create keys already "
    "moved to the target on it (acknowledged writes fork: a counter restarts, an EXPIRE finds its key gone) and the "
    "resume stops on a BUSYKEY conflict with both copies kept; Redis gives the promoted replica no marker "
    "(redis#6339); what the runbook should do with the forked copies is not settled yet"))


def _kill_marks(point: Failpoint | None, hit: int, victim: str) -> list:
    return [SOURCE_FAILOVER_MID_SLOT] if (point, hit, victim) == (MIGRATED_POINT, 2, "source") else []


@pytest.mark.parametrize("point,hit,victim", [
    pytest.param(p, n, v, id=f"{p.name if p else 'missing'}{':' + str(n) if n > 1 else ''}-kill-{v}",
                 marks=_kill_marks(p, n, v))
    for p, n, v in KILLS])
def test_master_killed_at_the_point_then_resume(matrix, point: Failpoint | None, hit: int, victim: str):
    assert point is not None, "the sampled point of this case is no longer in the code (see KILLS)"
    name = point.name if hit == 1 else f"{point.name}:{hit}"
    p = matrix.next_point(f"{name}-kill-{victim}")
    topo = matrix.topo()
    dead = topo.nodes[p.source if victim == "source" else p.target]
    heir = topo.replicas_of(dead.id)[0]
    port = int(dead.address.rsplit(":", 1)[1])
    pid = matrix.sb.running_pids()[port]
    matrix.writers(p)
    try:
        started = time.time()
        proc = matrix.run(p, kill=["--kill-master", dead.address, "--pid", str(pid), "--replica", heir.address,
                                   "--at", name])
        deadline = time.time() + 120
        while matrix.sb.running_pids().get(port) == pid and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        if matrix.sb.running_pids().get(port) == pid:
            code, out = _finish(proc)
            pytest.fail(f"the run never reached {name} (exit {code}):\n{out[-3000:]}")
        p.log.append(f"{victim} master {dead.address} killed at {name} after {time.time() - started:.1f}s")
        wait_promoted(matrix.creds, heir.address)
        restart(matrix.sb, dead.address, matrix.creds)
        _wait_replica(matrix.creds, dead.address, 60)
        code, out = _finish(proc)
        p.log.append(f"run went on after the kill: exit {code} in {time.time() - started:.1f}s")
        assert code in (0, 1), f"the run crashed after the master was killed: exit {code}\n{out[-3000:]}"
        resumed = matrix.resume(p)
        assert resumed.returncode == 0, (f"resume failed after the {victim} master was killed at {name} (run: exit "
                                         f"{code}, {out[-1500:]}):\n{resumed.stdout}\n{resumed.stderr}\n"
                                         f"{journal_tail(p.run_dir)}\n{_seen_lost(p)}\n{_views(matrix)}")
        matrix.check(p)
    finally:
        if p.writers is not None:
            p.writers.stop()


def _views(matrix: Matrix) -> str:
    """Each node's role, cluster_state and the slots its view gives an owner other than the masters' own claims
    (for a failure message: a node that answers CLUSTERDOWN says why here)."""
    try:
        topo = matrix.topo()
    except Exception as e:  # the cluster cannot be read at all: say so rather than hide the failure behind this
        return f"the cluster could not be observed: {e}"
    owners = topo.owners()
    lines = ["each node's view:"]
    for node in sorted(topo.nodes.values(), key=lambda n: n.address):
        view = topo.views.get(node.id)
        try:
            info = node_client(node.address, matrix.creds).execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            state = " ".join(w for w in text.split() if w.startswith(("cluster_state", "cluster_slots_")))
        except Exception as e:  # a node down or refusing: its line says so
            state = f"unreachable: {e}"
        failing = sorted(e.address for e in view.entries.values() if not e.healthy) if view else []
        wrong = [slot for slot, seen in enumerate(view.owners()) if seen != owners[slot]] if view else []
        lines.append(f"  {node.address} {'master' if node.is_master else 'replica'} {state}; sees failing: "
                     f"{failing or 'none'}; {len(wrong)} slots seen with another owner"
                     f"{': ' + str(wrong[:10]) if wrong else ''}")
    return "\n".join(lines)


def _seen_lost(p: Point) -> str:
    """The writes the writers saw lost while the run went on (for a failure message)."""
    if p.writers is None:
        return ""
    p.writers.stop()
    seen = p.writers.seen_lost()
    return (f"writers saw {len(seen)} keys lose acknowledged writes meanwhile, e.g.:\n  " + "\n  ".join(seen[:5])
            if seen else "the writers saw no lost write meanwhile")


def _wait_replica(creds, address: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            info = node_client(address, creds).info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{address} did not come back as an in-sync replica within {timeout:.0f}s")


def test_the_whole_keyspace_after_the_matrix(matrix):
    """Every key the sandbox held before the first point, anywhere in the cluster, still has its type, value and TTL
    presence; no slot open; no key on a non-owner; four masters."""
    matrix.heal()
    if matrix.healed:
        print("put right between points (after a failed point): " + "; ".join(matrix.healed))
    assert_sound(SEED, matrix.creds, matrix.initial)
