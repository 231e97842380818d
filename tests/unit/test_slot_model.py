"""A stateful model of Redis Cluster's slot rules driven by the real slot state machine (issue 17).

Hypothesis interleaves client writes, single Redis commands of the mover, mover crashes and restarts, MIGRATE
timeouts, gossip and failovers, and checks after every step that no acknowledged write is lost, that no key is left
where clients cannot find it, that the slot is never handed over while another master holds keys of it, and that the
mover only ever opens the slot towards its planned target.

The decisions are the real `slots.next_step` / `repair_step` / `intent_from_markers` / `Shards` and the real
`errors.classify`; the command sequences of each transition follow `transitions.py` (`_open`, `_drain`,
`_handover`, `_close`, `_rescue`, `_resolve_busy`), `mover.py` (`drive`, `observe_slots`) and `repair.py`, and can be
switched between today's code and the fixed code with `FIXED`.

Redis rules modelled (redis `src/cluster.c` getNodeByQuery/migrateCommand and `src/cluster_legacy.c`
clusterCommand SETSLOT and clusterUpdateSlotsConfigWith, 7.x):

- a node serves a key of a slot it believes it owns; a MIGRATING owner serves the keys it has and answers ASK for a
  key it does not have (a write that would create it too); a node that does not own the slot answers MOVED, unless it
  is IMPORTING and the command came after ASKING;
- SETSLOT MIGRATING only on the owner, IMPORTING only on a non-owner, STABLE clears both, NODE is per node and is
  refused only where the node believes it owns the slot, names another node and still holds keys of it; NODE with
  zero keys clears MIGRATING; NODE naming itself clears IMPORTING and bumps the node's config epoch;
- other nodes learn a claim by gossip when the claimer's epoch is higher, except a node IMPORTING the slot; a node
  that believed it owned the slot and still holds keys of it deletes them when it learns the new owner (dirty slot);
- MIGRATE restores each key on the target (RESTORE-ASKING, BUSYKEY when the key exists there) and deletes it on the
  source; a timeout can leave the key restored on the target and not deleted on the source;
- a failover: a master goes down, and only later (the cluster's node timeout, seconds) its replica takes over with
  its keys (replication taken as synchronous) and no marker, claiming the slot with a new epoch when, as far as it
  was told, its master owned it; a running mover is taken to meet the down master before that.

Invariants: (a) every acknowledged write's value is on some master, and, while no failover window is open, a GET from
any master never returns anything but the last acknowledged value; (b) when the mover says done the target's shard
owns the slot, holds every key, no marker is left and every value reads back; (c) SETSLOT NODE target is never sent
while another master holds keys of the slot; (d) while no failover window is open, no acknowledged value sits only on
a master that neither owns nor marks the slot; (e) markers only ever point towards the planned target (or back to the
owner, for a rescue).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generator

import pytest
import redis
from hypothesis import HealthCheck, currently_in_test_context, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from runbook_lib.cluster import errors
from runbook_lib.cluster.slots import (
    CLOSE,
    DONE,
    DRAIN,
    HANDOVER,
    MANUAL,
    OPEN,
    RESCUE,
    Shards,
    SlotState,
    Transition,
    intent_from_markers,
    next_step,
    repair_step,
)

CLOSE_TODAY = "today"
CLOSE_MIGRATING_SIDE_FIRST = "migrating side first"
CLOSE_FINISH_WHILE_MIGRATING = "finish while migrating"

FIXED = {
    "busykey_compare_and_delete": True,
    "close": CLOSE_FINISH_WHILE_MIGRATING,
    "rescue_is_journaled_intent": True,
    "foreign_slot_left_alone": True,
}
"""Which of the mover's known defects the model's mover has fixed; flip each when its fix lands on main.

busykey_compare_and_delete (defect 1): after a MIGRATE timeout left a key on both sides, today's `_resolve_busy`
DUMPs the source copy, DUMPs the target copy and DELs the source copy in separate round trips; fixed, the target copy
is read first and one script on the source compares and deletes.
close (defect 2): CLOSE_TODAY, `_close` sends SETSLOT STABLE to every marked node after a count taken before;
CLOSE_MIGRATING_SIDE_FIRST (main at 102990b), STABLE goes to the MIGRATING side first, the ASKs already sent land
(ASK_GRACE_S), then each IMPORTING side is counted again and cleared in one transaction with a count, else the move is
finished; CLOSE_FINISH_WHILE_MIGRATING (a proposal), a repair never closes a slot whose source is MIGRATING (an ASK may
be on its way to the importing side, so "nothing moved" cannot be known) but finishes the move, and closes as
CLOSE_MIGRATING_SIDE_FIRST only a slot that is IMPORTING alone.
rescue_is_journaled_intent (defect 3): today the journal forgets a rescue, so a restart reads the holder's IMPORTING
marker as a move from the owner to the holder; fixed, `slot_rescue` keeps the slot open as a move owner -> owner.
foreign_slot_left_alone: today `repair` repairs another tool's open slot from its markers when its importing node
holds keys (it is also a stranded slot); fixed, such a slot is left alone.
"""

SLOT = 7
KEYS = ("k0", "k1", "k2", "k3")
KEYS_PER_MIGRATE = 2
MAX_HOPS = 6
CLIENTS = (0, 1)
"""Two writers, each with at most one command on its way, so one can hold a redirect while the other writes."""
MAX_RETRIES = 4
"""TopologyChanged retries of one `drive` without a transition before it gives up (the convergence timeout)."""
MAX_BURST = 6
"""The most commands the mover sends in one rule step (Hypothesis shrinks towards one)."""
MAX_HEAD = 30
"""The most commands an earlier, crashed mover may have sent before an example starts (a head start to open states)."""
CRASH_ODDS = (False,) * 3 + (True,)
"""The mover dies after one rule's commands one time in four."""
MAX_RESTARTS = 4
"""Restarts (`runbook resume`) after a crash or a stop in one example; an operator gives up at some point."""
BUSY_EXAMPLES, CLOSE_EXAMPLES, RESCUE_EXAMPLES, FAILOVER_EXAMPLES, EVERYTHING_EXAMPLES = 500, 1600, 300, 300, 300
"""Examples per machine, the whole file about a minute once the defects are fixed. In today's code the focused
machines found their defect in 13 of 15 runs (defect 1, median ~140 examples), 10 of 12 (defect 2, ~500) and 15 of
15 (defect 3, ~40); the `test_defect_*` replays below fail every time."""


class Unreachable(redis.ConnectionError):
    """A command sent to a node that is down."""


def _err(text: str) -> redis.ResponseError:
    """An error reply as redis-py raises it, so the real `errors.classify` reads it."""
    return redis.ResponseError(text)


def log(message: Callable[[], str]) -> None:
    """A note for Hypothesis's failure report (built only inside a test run: the example tests drive the model too)."""
    if currently_in_test_context():
        note(message())


def tally(name: str) -> None:
    """A Hypothesis statistics event (`pytest --hypothesis-show-statistics`), only inside a test run."""
    if currently_in_test_context():
        event(name)


@dataclass
class Node:
    """One Redis node as far as one slot goes: role, its own view of the owner, its markers, epoch and keys."""

    name: str
    role: str
    replica_of: str | None = None
    view: str | None = None
    migrating: str | None = None
    importing: str | None = None
    epoch: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def marked(self) -> bool:
        """Whether the node has a MIGRATING or IMPORTING marker for the slot."""
        return bool(self.migrating or self.importing)


@dataclass
class Routed:
    """What a node does with a key command: serve it, redirect (MOVED/ASK), or fail (down, CLUSTERDOWN)."""

    kind: str
    node: str | None = None


class Cluster:
    """Masters with one replica each, one slot: Redis's per-node slot rules, routing, MIGRATE, gossip, failover."""

    def __init__(self, masters: list[str], owner: str) -> None:
        """Every master (epochs 1, 2, ...) believes `owner` owns the slot; replica `Xr` replicates master `X`."""
        self.nodes: dict[str, Node] = {}
        for i, m in enumerate(masters):
            self.nodes[m] = Node(m, "master", view=owner, epoch=i + 1)
            self.nodes[m + "r"] = Node(m + "r", "replica", replica_of=m)

    def masters(self) -> list[str]:
        """The live masters, by name."""
        return sorted(n for n, node in self.nodes.items() if node.role == "master")

    def max_epoch(self) -> int:
        """The highest config epoch any node has had (Redis's currentEpoch)."""
        return max(node.epoch for node in self.nodes.values())

    def claimed_owner(self) -> str | None:
        """The owner as the masters claim it themselves, highest epoch first (what a fresh client would be told): a
        master that is down and not yet replaced keeps its claim, as Redis keeps naming it until its replica takes
        over."""
        claims = [n for n, node in self.nodes.items() if node.role in ("master", "down") and node.view == n]
        if not claims:
            return self.nodes[self.masters()[0]].view
        return max(claims, key=lambda n: self.nodes[n].epoch)

    def shard(self, name: str) -> set[str]:
        """A master and its replica: the names one shard is served by."""
        base = self.nodes[name].replica_of or name
        return {base, base + "r"}

    def route(self, at: str, key: str, asking: bool) -> Routed:
        """Redis's getNodeByQuery for a single-key command at node `at`."""
        node = self.nodes.get(at)
        if node is None or node.role != "master":
            return Routed("down")
        owner = node.view
        if owner is None:
            return Routed("clusterdown")
        if owner == at and node.migrating:
            return Routed("serve") if key in node.data else Routed("ask", node.migrating)
        if owner != at and node.importing and asking:
            return Routed("serve")
        if owner != at:
            return Routed("moved", owner)
        return Routed("serve")

    def read(self, start: str, key: str) -> tuple[str, Any]:
        """GET by a fresh client starting at `start`, following MOVED and ASK: ("value", v) or ("unavailable", why)."""
        at, asking = start, False
        for _ in range(MAX_HOPS):
            r = self.route(at, key, asking)
            if r.kind == "serve":
                return "value", self.nodes[at].data.get(key)
            if r.kind in ("moved", "ask"):
                at, asking = r.node, r.kind == "ask"
            elif r.kind == "down":
                owner = self.claimed_owner()
                if owner is None or owner == at:
                    return "unavailable", "down"
                at, asking = owner, False
            else:
                return "unavailable", r.kind
        return "unavailable", "too many redirects"

    def command(self, at: str, op: tuple, timeout: bool = False) -> Any:
        """One command of the mover at node `at`: its reply, an error reply, or Unreachable."""
        node = self.nodes.get(at)
        if node is None or node.role != "master":
            return Unreachable(f"{at} is down")
        name = op[0]
        if name == "COUNTKEYSINSLOT":
            return len(node.data)
        if name == "GETKEYSINSLOT":
            return sorted(node.data)[: op[1]]
        if name == "SETSLOT":
            return self._setslot(node, op[1], op[2] if len(op) > 2 else None)
        if name == "MULTI COUNTKEYSINSLOT SETSLOT STABLE":
            count = len(node.data)
            node.migrating = node.importing = None
            return count
        if name == "MIGRATE":
            return self._migrate(node, op[1], op[2], timeout)
        key, asking = op[1], op[-1]
        r = self.route(at, key, asking)
        if r.kind != "serve":
            return _redirect_error(r)
        if name == "DUMP":
            return node.data.get(key)
        if name == "DEL":
            return int(node.data.pop(key, None) is not None)
        if name == "EVAL same-copy-del":
            if key not in node.data:
                return 0
            if node.data[key] != op[2]:
                return -1
            del node.data[key]
            return 1
        raise AssertionError(f"unknown command {op}")

    def _setslot(self, node: Node, action: str, peer: str | None) -> Any:
        """CLUSTER SETSLOT on one master, with the checks of clusterCommand in cluster_legacy.c."""
        if action == "MIGRATING":
            if node.view != node.name:
                return _err(f"ERR I'm not the owner of hash slot {SLOT}")
            node.migrating = peer
        elif action == "IMPORTING":
            if node.view == node.name:
                return _err(f"ERR I'm already the owner of hash slot {SLOT}")
            node.importing = peer
        elif action == "STABLE":
            node.migrating = node.importing = None
        elif action == "NODE":
            if node.view == node.name and peer != node.name and node.data:
                return _err(f"ERR Can't assign hashslot {SLOT} to a different node while I still hold keys for this "
                            "hash slot.")
            if not node.data:
                node.migrating = None
            node.view = peer
            if peer == node.name and node.importing:
                self.bump(node)
                node.importing = None
        return "OK"

    def bump(self, node: Node) -> None:
        """clusterBumpConfigEpochWithoutConsensus: a new, unique, highest epoch unless the node has one already."""
        others = [n.epoch for n in self.nodes.values() if n is not node]
        if node.epoch <= max(others):
            node.epoch = self.max_epoch() + 1

    def _migrate(self, node: Node, dest: str, keys: list[str], timeout: bool) -> Any:
        """MIGRATE ... KEYS: per key RESTORE-ASKING on the target, then DEL here; a timeout restores and keeps."""
        if node.view != node.name and not node.importing:
            return _err(f"MOVED {SLOT} {node.view}")
        present = [k for k in keys if k in node.data]
        if not present:
            return "NOKEY"
        target = self.nodes[dest]
        if target.role != "master":
            return _err("IOERR error or timeout connecting to the client")
        first_error = None
        for k in present:
            r = self.route(dest, k, asking=True)
            if r.kind != "serve":
                first_error = first_error or _err(f"ERR Target instance replied with error: {_redirect_error(r)}")
                continue
            if k in target.data:
                first_error = first_error or _err("ERR Target instance replied with error: BUSYKEY Target key name "
                                                  "already exists.")
                continue
            target.data[k] = node.data[k]
            if not timeout:
                del node.data[k]
        if timeout:
            return _err("IOERR error or timeout reading to target instance")
        return first_error or "OK"

    def gossip(self, to: str, claimer: str) -> None:
        """clusterUpdateSlotsConfigWith: `to` learns `claimer`'s claim of the slot if its epoch is higher."""
        x, y = self.nodes[to], self.nodes[claimer]
        if x.role != "master" or y.role != "master" or y.view != claimer or x.view == claimer or x.importing:
            return
        if x.view is not None and self.nodes[x.view].epoch >= y.epoch:
            return
        if x.view == to and x.data:
            x.data.clear()
        x.view = claimer

    def competing_claims(self) -> bool:
        """Whether a master that is not migrating the slot claims it while another claims it with a higher epoch
        (after a failover): until gossip settles it, a client sent to the loser reads its own copy, as in Redis."""
        owner = self.claimed_owner()
        return any(self.nodes[n].view == n and n != owner and not self.nodes[n].migrating for n in self.masters())

    def converged(self) -> "Cluster":
        """A copy of the cluster after gossip has told every node every claim (what `eventually` reads)."""
        copy = Cluster([], owner="")
        copy.nodes = {n: replace(node, data=dict(node.data)) for n, node in self.nodes.items()}
        for _ in range(len(copy.nodes)):
            for to in copy.masters():
                for claimer in copy.masters():
                    copy.gossip(to, claimer)
        return copy

    def kill(self, master: str) -> bool:
        """The master stops answering (its replica takes over only later, after the cluster's node timeout); one
        master is down at a time."""
        node, replica = self.nodes[master], self.nodes.get(master + "r")
        if node.role != "master" or node.replica_of or replica is None or replica.role != "replica":
            return False
        if any(n.role == "down" for n in self.nodes.values()):
            return False
        node.role = "down"
        return True

    def promote(self, master: str) -> str | None:
        """The down master's replica takes over with its keys (replication taken as synchronous) and no marker,
        claiming the slot with a new epoch if, as far as the cluster has told it, its master owned the slot."""
        dead, replica = self.nodes[master], self.nodes.get(master + "r")
        if dead.role != "down" or replica is None:
            return None
        owner = self.claimed_owner()
        dead.role = "dead"
        replica.role, replica.replica_of = "master", master
        replica.data = dict(dead.data)
        replica.epoch = self.max_epoch() + 1
        replica.view = replica.name if owner == master else owner
        return replica.name

    def failover(self, master: str) -> str | None:
        """`kill` then `promote`: returns the new master."""
        return self.promote(master) if self.kill(master) else None


def _redirect_error(r: Routed) -> Exception:
    """The error a client or MIGRATE gets for a command a node does not serve."""
    if r.kind == "moved":
        return _err(f"MOVED {SLOT} {r.node}")
    if r.kind == "ask":
        return _err(f"ASK {SLOT} {r.node}")
    if r.kind == "down":
        return Unreachable("down")
    return _err("CLUSTERDOWN Hash slot not served")


class ModelJournal:
    """The events of `journal.py` the model needs, kept across mover crashes, and its `open_slots`."""

    def __init__(self) -> None:
        """An empty journal (a fresh run directory)."""
        self.entries: list[dict] = []

    def record(self, event_name: str, **fields: Any) -> None:
        """Append one event (durable at once, as `Journal.record` fsyncs before it returns)."""
        self.entries.append({"event": event_name, **fields})

    def open_slots(self) -> dict[int, dict]:
        """Today's `Journal.open_slots`, or the fixed one that keeps a rescue open as owner -> owner."""
        moves: dict[int, dict] = {}
        rescues: dict[int, dict] = {}
        for e in self.entries:
            kind = e["event"]
            if kind == "slots_open":
                moves.update({s: e for s in e["slots"]})
            elif kind in ("slot_closed", "slot_done"):
                moves.pop(e["slot"], None)
                rescues.pop(e["slot"], None)
            elif kind == "slots_assigned":
                for s in e["slots"]:
                    moves.pop(s, None)
            elif kind == "slot_rescue" and FIXED["rescue_is_journaled_intent"]:
                rescues[e["slot"]] = {**e, "source": e["owner"], "target": e["owner"]}
            elif kind == "slot_rescued":
                rescues.pop(e["slot"], None)
        return {**rescues, **moves}


def repair_decision(state: SlotState, source: str, target: str) -> Transition:
    """`slots.repair_step`, or with CLOSE_FINISH_WHILE_MIGRATING the move finished instead of closed while the
    source is MIGRATING."""
    step = repair_step(state, source, target)
    if step.kind == CLOSE and state.migrating and FIXED["close"] == CLOSE_FINISH_WHILE_MIGRATING:
        return next_step(state, source, target)
    return step


class TopologyChanged(Exception):
    """As in mover.py: read the cluster again and decide afresh."""


class Stop(Exception):
    """The run stops (MigrationError, CheckFailed, a refusal or an error escaping): the slot is left as it is."""


@dataclass
class Topo:
    """A CLUSTER NODES snapshot: the live masters' views of the slot, their markers and epochs, replicas' masters."""

    views: dict[str, tuple[str | None, str | None, str | None, int]]
    master_of: dict[str, str]

    @property
    def masters(self) -> list[str]:
        """The masters the snapshot saw healthy (`Nodes.masters`)."""
        return sorted(self.views)

    def owner(self) -> str | None:
        """`Topology.owners`: the claim with the highest epoch, else the seed's view."""
        claims = [(epoch, n) for n, (view, _, _, epoch) in self.views.items() if view == n]
        if claims:
            return max(claims)[1]
        return self.views[self.masters[0]][0] if self.masters else None

    def is_open(self) -> bool:
        """Whether any master marks the slot (`repair.open_slots`)."""
        return any(mig or imp for _, mig, imp, _ in self.views.values())


Program = Generator[tuple, Any, Any]
"""A mover coroutine: yields ("cmd", node, op), ("topo",), ("journal", event, fields), ("grace",) (ASK_GRACE_S),
("opening",)/("opened",) around an OPEN and ("done",); gets each reply back."""


class ModelMover:
    """The mover's and repair's command sequences as a coroutine of single commands, deciding with the real slots."""

    def __init__(self, source: str, target: str, pairs: set[tuple[str, str]], journal: ModelJournal) -> None:
        """A fresh mover process: the planned move's shards, every replica pair the journal knows, the journal."""
        self.source, self.target = source, target
        self.shards = Shards(pairs)
        self.journal = journal
        self.topo = Topo({}, {})
        self.state: SlotState | None = None

    def cmd(self, node: str, *op: Any) -> Program:
        """One command, raw reply (`Nodes.pipeline(raise_on_error=False)`); an unreachable node is a topology change."""
        reply = yield ("cmd", node, op)
        if isinstance(reply, redis.ConnectionError):
            raise TopologyChanged(f"{node} unreachable")
        return reply

    def checked(self, node: str, *op: Any, ok: tuple[str, ...] = ()) -> Program:
        """One command whose error reply is checked as `_check` does (a topology change, or a stop)."""
        reply = yield from self.cmd(node, *op)
        self.check(node, reply, ok)
        return reply

    def check(self, node: str, reply: Any, ok: tuple[str, ...] = ()) -> None:
        """`Nodes.check`, with the real `errors.classify`."""
        if not isinstance(reply, Exception):
            return
        kind = errors.classify(reply)
        if kind in ok:
            return
        if kind in (errors.TOPOLOGY, errors.NOT_OWNER):
            raise TopologyChanged(f"{node}: {reply}")
        raise Stop(f"{node} answered {reply}")

    def raw(self, node: str, *op: Any) -> Program:
        """A command through a plain client (`Nodes.each`, `misplaced_keys`): a connection error escapes as it is."""
        reply = yield ("cmd", node, op)
        if isinstance(reply, redis.ConnectionError):
            raise Stop(f"redis.ConnectionError from {node} escaped")
        return reply

    def record(self, event_name: str, **fields: Any) -> Program:
        """A journal entry, a step of its own: a crash can fall between it and the command it announces."""
        yield ("journal", event_name, fields)

    def observe(self) -> Program:
        """`observe`/`refresh`: a CLUSTER NODES snapshot of every live master (one step, a simplification)."""
        self.topo = yield ("topo",)

    def current(self, node: str) -> str:
        """`Nodes.current_master` with the real `Shards`: the master serving `node`'s shard now."""
        found = self.shards.current(node, set(self.topo.masters), self.topo.master_of)
        if found is None:
            raise TopologyChanged(f"no master serves the shard of {node}")
        return found

    def shard_of(self, node: str) -> str | None:
        """`repair._shard_of`: the current master, or None while no replica has taken over."""
        try:
            return self.current(node)
        except TopologyChanged:
            return None

    def observe_slot(self) -> Program:
        """`observe_slots`: owner and markers from the snapshot, then the slot's key count on every master."""
        t = self.topo
        keys = {}
        for m in t.masters:
            keys[m] = int((yield from self.checked(m, "COUNTKEYSINSLOT")))
        return SlotState(SLOT, t.owner(), {m: v[1] for m, v in t.views.items() if v[1]},
                         {m: v[2] for m, v in t.views.items() if v[2]}, keys, {m: v[0] for m, v in t.views.items()})

    def run(self) -> Program:
        """`runbook resume` (and the first run): repair what is open or stranded, then move the slot to the target."""
        yield from self.observe()
        yield from self.repair()
        yield from self.observe()
        if self.topo.is_open():
            raise Stop("blocked: the slot is still open after the repair")
        owner, target = self.topo.owner(), self.current(self.target)
        if owner != target:
            handed = yield from self.drive(owner, target, next_step)
            if handed:
                yield from self.broadcast(handed)
        yield ("done",)

    def repair(self) -> Program:
        """`repair.repair` for the one slot, with neither `--slot` nor `--foreign`."""
        topo = self.topo
        ours = self.journal.open_slots()
        live = topo.is_open()
        left_alone = live and SLOT not in ours
        owner = topo.owner()
        stranded = False
        for m in topo.masters:
            if m != owner and (yield from self.raw(m, "COUNTKEYSINSLOT")):
                stranded = True
        if FIXED["foreign_slot_left_alone"]:
            todo = (live or stranded) and not left_alone
        else:
            todo = (live and not left_alone) or stranded
        if not todo:
            return
        try:
            state = yield from self.observe_slot()
        except TopologyChanged as e:
            raise Stop(f"repair: {e}") from None
        if SLOT in ours:
            source, target = ours[SLOT]["source"], ours[SLOT]["target"]
        else:
            intent = intent_from_markers(state, self.shard_of)
            if intent is None and state.is_open:
                raise Stop("repair: markers disagree")
            source, target = intent or (state.owner or "", state.owner or "")
        s, t = self.shard_of(source) or source, self.shard_of(target) or target
        step = repair_decision(state, s, t)
        if step.kind == MANUAL:
            raise Stop(f"repair: {step.reason}")
        if step.kind == DONE:
            if SLOT in ours and FIXED["rescue_is_journaled_intent"]:
                yield from self.record("slot_done", slot=SLOT)
            return
        yield from self.record("slot_repair", slot=SLOT, action=step.kind, source=s, target=t)
        yield from self.drive(source, target, repair_decision)

    def drive(self, source: str, target: str, step: Callable[[SlotState, str, str], Transition]) -> Program:
        """`Mover.drive` for one slot; returns (source, target) of a hand-over it made, else None."""
        self.state, handed, retries = None, None, 0
        while True:
            try:
                if self.state is None:
                    self.state = yield from self.observe_slot()
                s, t = self.current(source), self.current(target)
                x = step(self.state, s, t)
                log(lambda: f"mover decides {x.kind} {x.source}->{x.target} {x.nodes or ''} on {self.state}")
                if x.kind == MANUAL:
                    yield from self.record("slot_stop", slot=SLOT, reason=x.reason)
                    raise Stop(f"manual: {x.reason}")
                if x.kind == DONE:
                    if handed is None and SLOT in self.journal.open_slots():
                        yield from self.record("slot_done", slot=SLOT)
                    return handed
                if x.kind == OPEN:
                    yield ("opening",)
                    yield from self.open(x)
                    yield ("opened",)
                elif x.kind == DRAIN:
                    yield from self.drain(x)
                elif x.kind == HANDOVER:
                    yield from self.handover(x)
                    handed = (x.source, x.target)
                elif x.kind == CLOSE:
                    yield from self.close(x)
                elif x.kind == RESCUE:
                    yield from self.rescue(x)
                retries = 0
            except TopologyChanged as e:
                yield from self.record("topology_changed", error=str(e))
                retries += 1
                if retries > MAX_RETRIES:
                    raise Stop(f"the cluster did not settle ({e})") from None
                self.state = None
                yield from self.observe()

    def open(self, x: Transition) -> Program:
        """`_open`: tell an unaware target the owner, IMPORTING on the target, MIGRATING on the source."""
        s, t, state = x.source, x.target, self.state
        yield from self.record("slots_open", slots=[SLOT], source=s, target=t)
        if state.believed.get(t, s) not in (s, t):
            yield from self.checked(t, "SETSLOT", "NODE", s)
        if state.owner != t and state.importing.get(t) != s:
            yield from self.checked(t, "SETSLOT", "IMPORTING", s, ok=(errors.ALREADY_OWNER,))
        if state.owner == s and state.migrating.get(s) != t:
            yield from self.checked(s, "SETSLOT", "MIGRATING", t)
        self.state = state.opened(s, t)

    def drain(self, x: Transition) -> Program:
        """`_drain`: GETKEYSINSLOT, one MIGRATE of them, COUNTKEYSINSLOT, then BUSYKEY/failure handling."""
        s, t = x.source, x.target
        keys = yield from self.checked(s, "GETKEYSINSLOT", KEYS_PER_MIGRATE)
        yield from self.record("keys_migrating", source=s, target=t, keys=len(keys))
        reply = (yield from self.cmd(s, "MIGRATE", t, keys)) if keys else None
        left = yield from self.cmd(s, "COUNTKEYSINSLOT")
        failed = isinstance(reply, Exception)
        yield from self.record("keys_migrated", source=s, target=t)
        n = left if isinstance(left, int) else self.state.keys.get(s, 0)
        self.state = self.state.drained(s, t, n, 0 if failed or not keys else len(keys))
        if not failed:
            return
        kind = errors.classify(reply, during_migrate=True)
        if kind == errors.BUSYKEY:
            yield from self.resolve_busy(s, t, keys, target_asking=True)
            self.state = self.state.drained(s, t, self.state.keys.get(s, 0) or 1, 0)
        elif kind == errors.TOPOLOGY:
            raise TopologyChanged(f"{s}: {reply}")
        else:
            yield from self.record("migrate_failed", source=s, target=t, error=str(reply))
            raise Stop(f"MIGRATE failed: {reply}")

    def resolve_busy(self, src: str, tgt: str, keys: list[str], target_asking: bool = False,
                     source_asking: bool = False) -> Program:
        """`_resolve_busy`: today DUMP, DUMP, DEL in separate round trips; fixed, one compare-and-delete script."""
        if FIXED["busykey_compare_and_delete"]:
            theirs = []
            for k in keys:
                theirs.append((yield from self.checked(tgt, "DUMP", k, target_asking)))
            todo = [(k, p) for k, p in zip(keys, theirs) if p is not None and not isinstance(p, Exception)]
            if not todo:
                return
            yield from self.record("busykey_compare", source=src, target=tgt, keys=len(todo))
            for k, payload in todo:
                r = yield from self.cmd(src, "EVAL same-copy-del", k, payload, source_asking)
                if r == -1:
                    yield from self.record("busykey_conflict", key=k)
                    raise Stop(f"key {k} differs on {src} and {tgt}")
            return
        mine, theirs = [], []
        for k in keys:
            mine.append((yield from self.raw(src, "DUMP", k, source_asking)))
        for k in keys:
            theirs.append((yield from self.raw(tgt, "DUMP", k, target_asking)))
        for k, a, b in zip(keys, mine, theirs):
            if a is None or b is None or isinstance(a, Exception) or isinstance(b, Exception):
                continue
            if a != b:
                yield from self.record("busykey_conflict", key=k)
                raise Stop(f"key {k} differs on {src} and {tgt}")
            yield from self.record("busykey_same_value", key=k)
            yield from self.raw(src, "DEL", k, source_asking)

    def handover(self, x: Transition) -> Program:
        """`_handover`: SETSLOT NODE target on the target, then on the source."""
        s, t = x.source, x.target
        if self.state.holders() - {t}:
            raise Stop("refusing to hand over a slot whose keys are not all on the target")
        yield from self.record("slots_handover", slots=[SLOT], source=s, target=t)
        yield from self.checked(t, "SETSLOT", "NODE", t)
        yield from self.checked(s, "SETSLOT", "NODE", t)
        yield from self.record("slots_assigned", slots=[SLOT], source=s, target=t)
        self.state = self.state.handed_over(t)

    def close(self, x: Transition) -> Program:
        """`_close`: today STABLE on every marked node; fixed, the MIGRATING side, then each empty IMPORTING side."""
        state = self.state
        if FIXED["close"] == CLOSE_TODAY:
            yield from self.record("slot_closed", slot=SLOT, nodes=list(x.nodes))
            for node in x.nodes:
                yield from self.checked(node, "SETSLOT", "STABLE")
            self.state = state.closed(x.nodes)
            return
        first = [n for n in x.nodes if n in state.migrating]
        then = [n for n in x.nodes if n not in state.migrating]
        yield from self.record("slot_closing", slot=SLOT, nodes=list(x.nodes))
        for node in first:
            yield from self.checked(node, "SETSLOT", "STABLE")
        if first and then:
            yield ("grace",)
        closed, keys = list(first), dict(state.keys)
        for node in then:
            count = int((yield from self.checked(node, "COUNTKEYSINSLOT")))
            if count == 0:
                count = yield from self.checked(node, "MULTI COUNTKEYSINSLOT SETSLOT STABLE")
                closed.append(node)
            keys[node] = count
        if [n for n in then if n not in closed]:
            yield from self.record("slot_close_kept", slot=SLOT)
        else:
            yield from self.record("slot_closed", slot=SLOT, nodes=closed)
        done = state.closed(closed)
        self.state = SlotState(SLOT, state.owner, done.migrating, done.importing, keys, state.believed)

    def rescue(self, x: Transition) -> Program:
        """`_rescue`: IMPORTING on the holder towards the owner, ASKING MIGRATE of its keys to the owner, STABLE."""
        holder, owner = x.source, x.target
        yield from self.record("slot_rescue", slot=SLOT, holder=holder, owner=owner)
        if self.state.importing.get(holder) != owner:
            yield from self.checked(holder, "SETSLOT", "IMPORTING", owner)
        while True:
            keys = yield from self.checked(holder, "GETKEYSINSLOT", KEYS_PER_MIGRATE)
            if not keys:
                break
            reply = yield from self.cmd(holder, "MIGRATE", owner, keys)
            if isinstance(reply, Exception):
                if errors.classify(reply, during_migrate=True) != errors.BUSYKEY:
                    yield from self.record("migrate_failed", source=holder, target=owner, error=str(reply))
                    raise Stop(f"rescue MIGRATE failed: {reply}")
                yield from self.resolve_busy(holder, owner, keys, source_asking=True)
        if FIXED["rescue_is_journaled_intent"]:
            left = yield from self.checked(holder, "MULTI COUNTKEYSINSLOT SETSLOT STABLE")
        else:
            left = 0
            yield from self.checked(holder, "SETSLOT", "STABLE")
        yield from self.record("slot_rescued", slot=SLOT, holder=holder, owner=owner)
        self.state = self.state.rescued(holder)
        if left:
            self.state = self.state.drained(holder, owner, left, 0)

    def broadcast(self, handed: tuple[str, str]) -> Program:
        """`_broadcast_owners`: SETSLOT NODE target on every other master, errors only journaled."""
        s, t = handed
        for m in self.topo.masters:
            if m not in (s, t):
                try:
                    yield from self.cmd(m, "SETSLOT", "NODE", t)
                except TopologyChanged:
                    yield from self.record("broadcast_incomplete", node=m)


@dataclass
class Pending:
    """A client write on its way: the node it goes to next, whether after ASKING, how many hops so far."""

    key: str
    value: str
    at: str
    asking: bool = False
    hops: int = 0


class SlotModel(RuleBasedStateMachine):
    """Client writes, the mover's single commands, crashes, gossip and failovers against the cluster model."""

    TIMEOUTS = True
    CRASHES = True
    STRANDED = True
    """Whether MIGRATEs may time out, the mover may crash, and a stranded key may be there at the start (gossip and
    failovers are the rules of the `Gossip` and `Failovers` mixins)."""

    def __init__(self) -> None:
        """No cluster until `setup` (invariants run before it too)."""
        super().__init__()
        self.cluster: Cluster | None = None

    @initialize(roles=st.permutations(["a", "b", "c"]), stranded=st.booleans(), head=st.integers(0, MAX_HEAD))
    def setup(self, roles: list[str], stranded: bool, head: int = 0) -> None:
        """Source, target and a third master; two keys on the source, maybe a stranded key on the third master; with
        `head`, an earlier mover ran that many commands undisturbed and died there (where crashes are on) or stopped
        at its first MIGRATE, which timed out (where timeouts are on)."""
        self.source, self.target, self.third = roles
        self.cluster = Cluster(["a", "b", "c"], owner=self.source)
        self.acked: dict[str, Any] = {"k0": "v0", "k1": "v1"}
        self.cluster.nodes[self.source].data.update(self.acked)
        if stranded and self.STRANDED:
            self.cluster.nodes[self.third].data["k3"] = "stranded"
        self.journal = ModelJournal()
        self.pairs = {(m + "r", m) for m in ("a", "b", "c")}
        self.client_map = {c: self.source for c in CLIENTS}
        self.pending: dict[int, Pending] = {}
        self.writes = 0
        self.window = False
        self.failovers = 0
        self.opening = 0
        self.noticed: set[str] = set()
        self.restarts = 0
        log(lambda: f"source={self.source} target={self.target} third={self.third} "
                    f"stranded={stranded and self.STRANDED}")
        self._start()
        if head:
            self.mover(head, True, True)

    def _start(self) -> None:
        """A new mover process, `runbook resume` from the top."""
        self.last: tuple = ()
        self.driver = ModelMover(self.source, self.target, self.pairs, self.journal)
        self.program = self.driver.run()
        self.reply: Any = None
        self.status = "running"

    # -- clients -------------------------------------------------------------------------------------------------

    @rule(who=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS))
    def client(self, who: int, key: str) -> None:
        """Client `who`'s next hop: follow the MOVED or ASK it got (a redirect can be slow), else SET `key` afresh."""
        if who not in self.pending:
            self.writes += 1
            self.pending[who] = Pending(key, f"w{self.writes}", self.client_map[who])
        self._hop(who)

    def _hop(self, who: int) -> None:
        """Send client `who`'s command to the next node: served (acknowledged), redirected, or given up."""
        p = self.pending[who]
        r = self.cluster.route(p.at, p.key, p.asking)
        if r.kind == "serve":
            self.cluster.nodes[p.at].data[p.key] = p.value
            self.acked[p.key] = p.value
            log(lambda: f"client {who}: SET {p.key}={p.value} acknowledged by {p.at}"
                        f"{' after ASKING' if p.asking else ''}")
            del self.pending[who]
            return
        p.hops += 1
        sent_to = p.at
        if r.kind == "moved":
            self.client_map[who] = p.at = r.node
            p.asking = False
        elif r.kind == "ask":
            p.at, p.asking = r.node, True
        elif r.kind == "down":
            self.client_map[who] = p.at = self.cluster.claimed_owner()
            p.asking = False
        log(lambda: f"client {who}: SET {p.key}={p.value} sent to {sent_to}: {r.kind} {r.node or ''}")
        if r.kind == "clusterdown" or p.hops > MAX_HOPS:
            log(lambda: f"client {who}: SET {p.key}={p.value} failed ({r.kind}), not acknowledged")
            del self.pending[who]

    # -- the mover -----------------------------------------------------------------------------------------------

    @rule(n=st.integers(1, MAX_BURST), timeout=st.booleans(), crash=st.sampled_from(CRASH_ODDS))
    def mover(self, n: int, timeout: bool, crash: bool) -> None:
        """The mover sends its next n commands one by one (with `timeout` its next MIGRATE times out after the
        RESTORE), then with `crash` dies there; a mover that crashed or stopped is restarted instead (`runbook
        resume`)."""
        if self.status in ("crashed", "stopped") and self.restarts < MAX_RESTARTS:
            self.restarts += 1
            log(lambda: "mover restarted (runbook resume)")
            self._start()
            return
        timeout = timeout and self.TIMEOUTS
        for _ in range(n):
            if self.status != "running":
                return
            try:
                request = self.program.send(self.reply)
            except (Stop, TopologyChanged) as e:
                why = str(e)
                self.status = "stopped"
                log(lambda: f"mover stopped: {why}")
                tally(f"mover stopped: {why.split(':')[0]}")
                return
            self.last = request
            self.reply = self._execute(request, timeout)
            if request[0] == "cmd" and request[2][0] == "MIGRATE":
                timeout = False
        if crash and self.CRASHES and self.status == "running":
            self.program.close()
            self.status = "crashed"
            log(lambda: "mover crashed")

    def _execute(self, request: tuple, timeout: bool) -> Any:
        """Carry out one request of the mover's coroutine against the model and return its reply."""
        kind = request[0]
        if kind == "topo":
            c = self.cluster
            return Topo({m: (c.nodes[m].view, c.nodes[m].migrating, c.nodes[m].importing, c.nodes[m].epoch)
                         for m in c.masters()},
                        {n: node.replica_of for n, node in c.nodes.items() if node.role == "replica"})
        if kind == "journal":
            self.journal.record(request[1], **request[2])
            log(lambda: f"mover journals {request[1]}")
            return None
        if kind == "grace":
            log(lambda: "mover waits ASK_GRACE_S: the ASKs already sent land")
            for who in [w for w, p in self.pending.items() if p.asking]:
                while who in self.pending and self.pending[who].asking:
                    self._hop(who)
            return None
        if kind == "opening":
            self.opening = self.failovers
            return None
        if kind == "opened":
            if self.opening == self.failovers:
                self.window = False
            return None
        if kind == "done":
            self._check_done()
            self.status = "done"
            return None
        _, node, op = request
        self._check_command(node, op)
        reply = self.cluster.command(node, op, timeout=timeout and op[0] == "MIGRATE")
        if isinstance(reply, Unreachable):
            self.noticed.add(node)
        log(lambda: f"mover: {node} {' '.join(map(str, op))} -> "
                    f"{f'error {reply}' if isinstance(reply, Exception) else repr(reply)}")
        return reply

    def _check_command(self, node: str, op: tuple) -> None:
        """(c) no hand-over while another master holds keys; (e) markers only ever towards the planned target."""
        c = self.cluster
        if node not in c.masters():
            return
        if op[:2] == ("SETSLOT", "NODE") and op[2] == node:
            others = {m: sorted(c.nodes[m].data) for m in c.masters() if m != node and c.nodes[m].data}
            assert not others, f"(c) SETSLOT {SLOT} NODE {node} sent to {node} while {others} hold keys of the slot"
        if op[:2] == ("SETSLOT", "MIGRATING"):
            assert op[2] in c.shard(self.target), (
                f"(e) SETSLOT MIGRATING {op[2]} on {node}: a move towards {op[2]}, not the planned target "
                f"{self.target}")
        if op[:2] == ("SETSLOT", "IMPORTING"):
            assert node in c.shard(self.target) or op[2] in c.shard(c.claimed_owner()), (
                f"(e) SETSLOT IMPORTING {op[2]} on {node}: neither the planned target nor a rescue towards the owner")

    # -- invariants ----------------------------------------------------------------------------------------------

    def _holders(self, key: str, value: Any, down: bool = False) -> list[str]:
        """The live masters holding `key` with `value` (`down`: and masters down, whose replica has it)."""
        c = self.cluster
        names = c.masters() + ([n for n, node in c.nodes.items() if node.role == "down"] if down else [])
        return [m for m in names if c.nodes[m].data.get(key, object()) == value]

    def _settled(self) -> bool:
        """Whether the strict checks apply: no failover window, no competing claim, no master down."""
        c = self.cluster
        return not (self.window or c.competing_claims() or any(n.role == "down" for n in c.nodes.values()))

    @invariant()
    def acknowledged_writes_are_kept(self) -> None:
        """(a) Every acknowledged write's value is still on some master (or on one down, which its replica has)."""
        if self.cluster is None:
            return
        for key, value in self.acked.items():
            assert self._holders(key, value, down=True), f"(a) acknowledged {key}={value} is on no master: lost"

    @invariant()
    def acknowledged_writes_are_readable(self) -> None:
        """(a) When `_settled`, a GET from any master never returns anything but a key's last acknowledged value (a
        redirect loop is an error the client sees, not a wrong value: counted, not failed)."""
        if self.cluster is None or not self._settled():
            return
        self._all_readable("(a)", strict=False)

    def _all_readable(self, label: str, strict: bool = True) -> None:
        """A GET of every acknowledged key from every master returns its last value; not `strict`, a redirect loop
        (unavailable, an error the client sees) is let pass, counted as a statistics event, but no wrong value is."""
        for key, value in self.acked.items():
            for start in self.cluster.masters():
                got = self.cluster.read(start, key)
                if got[0] == "unavailable" and not strict:
                    tally(f"GET unavailable: {got[1]}")
                    continue
                assert got == ("value", value), (
                    f"{label} GET {key} from {start} gives {got}, the last acknowledged value is {value!r} "
                    f"(on {self._holders(key, value)})")

    @invariant()
    def no_key_stranded(self) -> None:
        """(d) When `_settled`, an acknowledged value is on the owner or on a master with a marker."""
        if self.cluster is None or not self._settled():
            return
        c = self.cluster
        owner = c.claimed_owner()
        for key, value in self.acked.items():
            where = self._holders(key, value)
            assert any(m == owner or c.nodes[m].marked for m in where), (
                f"(d) {key}={value} is only on {where}, which neither own the slot (owner {owner}) nor mark it")

    def _check_done(self) -> None:
        """(b) When the mover says done: the target's shard owns the slot, holds every key, no marker is left, and once
        gossip has settled every claim a GET from any master finds every acknowledged value."""
        c = self.cluster
        owner = c.claimed_owner()
        assert owner in c.shard(self.target), f"(b) done, but the slot is owned by {owner}, not the target"
        others = {m: sorted(c.nodes[m].data) for m in c.masters() if m != owner and c.nodes[m].data}
        assert not others, f"(b) done, but {others} still hold keys of the slot"
        marks = {m: (c.nodes[m].migrating, c.nodes[m].importing) for m in c.masters() if c.nodes[m].marked}
        assert not marks, f"(b) done, but markers remain: {marks}"
        live, self.cluster = self.cluster, self.cluster.converged()
        try:
            self._all_readable("(b)", strict=not any(n.role == "down" for n in c.nodes.values()))
        finally:
            self.cluster = live
        self.window = False
        tally("mover done")


class Gossip(SlotModel):
    """Adds gossip: one node hears another's claim of the slot (the masters learn a hand-over late)."""

    @rule(to=st.sampled_from(["a", "b", "c", "ar", "br", "cr"]), claimer=st.sampled_from(["a", "b", "c", "ar", "br",
                                                                                           "cr"]))
    def gossip(self, to: str, claimer: str) -> None:
        """One node hears another's claim of the slot."""
        self.cluster.gossip(to, claimer)


class Failovers(SlotModel):
    """Adds failovers: a master goes down, later its replica takes over (keys kept, markers not).

    The promotion waits for the cluster's node timeout (seconds); the mover's commands take milliseconds, so a
    running mover is taken to have sent a command to the down master (and noticed) before its replica takes over.
    """

    @rule(which=st.sampled_from(["a", "b", "c"]))
    def kill(self, which: str) -> None:
        """A master goes down."""
        c = self.cluster
        was_open = any(c.nodes[m].marked for m in c.masters())
        if c.kill(which):
            log(lambda: f"{which} is down")
            self.failovers += 1
            self.window = self.window or was_open

    @rule(which=st.sampled_from(["a", "b", "c"]))
    def promote(self, which: str) -> None:
        """The down master's replica takes over, once the mover (if running) has met the down master."""
        if self.status == "running" and which not in self.noticed:
            return
        promoted = self.cluster.promote(which)
        if promoted is not None:
            log(lambda: f"{promoted} took over from {which}")


def budget(examples: int, steps: int) -> settings:
    """Hypothesis settings for one machine: `examples` runs of at most `steps` rules (no deadline: shrinking a
    stateful failure replays long runs)."""
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None, report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class BusyKeyModel(SlotModel):
    """Focus on defect 1: MIGRATE timeouts (the mover stops, then resumes) and client writes."""

    CRASHES = False
    STRANDED = False


class CloseModel(SlotModel):
    """Focus on defect 2: crashes and restarts that close an open slot while clients write through ASK."""

    TIMEOUTS = False
    STRANDED = False


class RescueModel(SlotModel):
    """Focus on defect 3: a stranded key on the third master, rescued by the mover, crashes in between."""

    TIMEOUTS = False


class FailoverModel(Failovers):
    """Failovers of the source, the target or the third master in the middle of a move, with client writes."""

    TIMEOUTS = False
    CRASHES = False
    STRANDED = False


class EverythingModel(Gossip, Failovers):
    """All of it: timeouts, crashes, gossip, failovers, a stranded key."""


TestBusyKeyModel = BusyKeyModel.TestCase
TestBusyKeyModel.settings = budget(BUSY_EXAMPLES, 40)
TestCloseModel = CloseModel.TestCase
TestCloseModel.settings = budget(CLOSE_EXAMPLES, 20)
TestRescueModel = RescueModel.TestCase
TestRescueModel.settings = budget(RESCUE_EXAMPLES, 40)
TestFailoverModel = FailoverModel.TestCase
TestFailoverModel.settings = budget(FAILOVER_EXAMPLES, 40)
TestEverythingModel = EverythingModel.TestCase
TestEverythingModel.settings = budget(EVERYTHING_EXAMPLES, 60)


# -- the model itself, by example ---------------------------------------------------------------------------------


def three() -> Cluster:
    """Masters a, b, c (with replicas ar, br, cr); a owns the slot and holds k0."""
    c = Cluster(["a", "b", "c"], owner="a")
    c.nodes["a"].data["k0"] = "v0"
    return c


def test_the_owner_serves_and_other_masters_answer_moved():
    """Routing: the owner serves, a non-owner answers MOVED, a client following it reads the value."""
    c = three()
    assert c.read("a", "k0") == ("value", "v0")
    assert c.route("b", "k0", asking=False) == Routed("moved", "a")
    assert c.read("c", "k0") == ("value", "v0")


def test_a_migrating_owner_serves_keys_it_has_and_asks_for_others_even_new_ones():
    """A MIGRATING owner serves the keys it has and answers ASK for any other key, a write creating one too."""
    c = three()
    assert c.command("b", ("SETSLOT", "IMPORTING", "a")) == "OK"
    assert c.command("a", ("SETSLOT", "MIGRATING", "b")) == "OK"
    assert c.route("a", "k0", asking=False) == Routed("serve")
    assert c.route("a", "k9", asking=False) == Routed("ask", "b"), "a write that would create a key is sent on"


def test_the_importing_node_serves_only_after_asking():
    """The IMPORTING node answers MOVED to its owner unless the command came after ASKING."""
    c = three()
    c.command("b", ("SETSLOT", "IMPORTING", "a"))
    assert c.route("b", "k9", asking=False) == Routed("moved", "a")
    assert c.route("b", "k9", asking=True) == Routed("serve")


def test_setslot_rules_follow_redis():
    """SETSLOT refusals as in cluster_legacy.c: NODE is refused only by an owner that still holds keys."""
    c = three()
    assert "already the owner" in str(c.command("a", ("SETSLOT", "IMPORTING", "b")))
    assert "not the owner" in str(c.command("b", ("SETSLOT", "MIGRATING", "c")))
    refused = c.command("a", ("SETSLOT", "NODE", "b"))
    assert errors.classify(refused) in (errors.TOPOLOGY, getattr(errors, "HOLDS_KEYS", errors.TOPOLOGY))
    assert "still hold keys" in str(refused) and c.nodes["a"].view == "a"
    c.nodes["c"].data["k3"] = "x"
    assert c.command("c", ("SETSLOT", "NODE", "b")) == "OK", "a node that does not own the slot is never refused"


def test_setslot_node_on_the_importing_target_claims_with_a_new_epoch():
    """SETSLOT NODE self on the importing target bumps its epoch; the other nodes learn it by gossip."""
    c = three()
    c.command("b", ("SETSLOT", "IMPORTING", "a"))
    c.command("b", ("SETSLOT", "NODE", "b"))
    assert c.nodes["b"].importing is None and c.nodes["b"].epoch == 4
    assert c.claimed_owner() == "b"
    assert c.nodes["c"].view == "a", "a third node learns the new owner later"
    c.gossip("c", "b")
    assert c.nodes["c"].view == "b"


def test_a_node_that_loses_the_slot_by_gossip_drops_its_keys():
    """A node that believed it owned the slot deletes its keys of it when it learns a newer owner."""
    c = three()
    c.command("b", ("SETSLOT", "IMPORTING", "a"))
    c.command("b", ("SETSLOT", "NODE", "b"))
    c.gossip("a", "b")
    assert c.nodes["a"].view == "b" and not c.nodes["a"].data, "redis#2969: the dirty slot's keys are deleted"


def test_an_importing_node_ignores_claims():
    """A node IMPORTING the slot ignores other nodes' claims of it."""
    c = three()
    c.command("b", ("SETSLOT", "IMPORTING", "a"))
    c.nodes["c"].view = "c"
    c.nodes["c"].epoch = 9
    c.gossip("b", "c")
    assert c.nodes["b"].view == "a"


def test_migrate_moves_a_key_and_a_timeout_leaves_it_on_both_sides():
    """MIGRATE moves a key; a timeout leaves it on both sides, and the next MIGRATE meets BUSYKEY."""
    c = three()
    c.nodes["a"].data["k1"] = "v1"
    c.command("b", ("SETSLOT", "IMPORTING", "a"))
    c.command("a", ("SETSLOT", "MIGRATING", "b"))
    assert c.command("a", ("MIGRATE", "b", ["k0"])) == "OK"
    assert "k0" not in c.nodes["a"].data and c.nodes["b"].data["k0"] == "v0"
    reply = c.command("a", ("MIGRATE", "b", ["k1"]), timeout=True)
    assert errors.classify(reply, during_migrate=True) == errors.MIGRATE_FAILED
    assert c.nodes["a"].data["k1"] == c.nodes["b"].data["k1"] == "v1"
    busy = c.command("a", ("MIGRATE", "b", ["k1"]))
    assert errors.classify(busy, during_migrate=True) == errors.BUSYKEY


def test_a_failover_keeps_the_keys_and_loses_the_markers():
    """A promoted replica has its master's keys, no marker, and claims the slot its master owned."""
    c = three()
    c.command("b", ("SETSLOT", "IMPORTING", "a"))
    c.command("a", ("SETSLOT", "MIGRATING", "b"))
    assert c.failover("a") == "ar"
    assert c.nodes["ar"].data == {"k0": "v0"} and not c.nodes["ar"].marked
    assert c.claimed_owner() == "ar" and c.nodes["b"].view == "a", "the importing node still names the dead master"
    assert c.read("c", "k0") == ("value", "v0")


def test_a_clean_move_by_the_model_mover_ends_done():
    """The model's mover, run without interference, moves the slot and its keys from a to b."""
    machine = SlotModel()
    machine.setup(["a", "b", "c"], stranded=False)
    mover_until(machine, lambda request: False)
    assert machine.status == "done"
    assert machine.cluster.claimed_owner() == "b" and machine.cluster.nodes["b"].data == {"k0": "v0", "k1": "v1"}
    assert [e["event"] for e in machine.journal.entries if e["event"].startswith("slots_")] == [
        "slots_open", "slots_handover", "slots_assigned"]


@pytest.mark.parametrize("stranded", [False, True])
def test_the_state_machine_decisions_cover_a_rescue_then_a_move(stranded):
    """With a stranded key on the third master the mover first rescues it to the owner, then moves the slot."""
    machine = SlotModel()
    machine.setup(["a", "b", "c"], stranded=stranded)
    mover_until(machine, lambda request: False)
    assert machine.status == "done"
    kinds = [e["event"] for e in machine.journal.entries]
    assert ("slot_rescue" in kinds) == stranded
    assert machine.cluster.nodes["b"].data.get("k3") == ("stranded" if stranded else None)


# -- the known defects, as fixed rule sequences (Hypothesis's shrunk examples, written out) -----------------------


def checked(machine: SlotModel) -> None:
    """Every invariant, as Hypothesis checks them after each rule."""
    machine.acknowledged_writes_are_kept()
    machine.acknowledged_writes_are_readable()
    machine.no_key_stranded()


def mover_until(machine: SlotModel, stop: Callable[[tuple], bool]) -> None:
    """The mover's commands one by one, invariants checked after each, until `stop` holds for the request just
    carried out or the mover stops, crashes or is done."""
    for _ in range(500):
        if machine.status != "running":
            return
        machine.mover(1, False, False)
        checked(machine)
        if stop(machine.last):
            return
    raise AssertionError("the mover did not finish")


def sent(node: str, *op: Any) -> Callable[[tuple], bool]:
    """A `mover_until` stop: the mover has just sent this command (op given by its first words) to `node`."""
    return lambda request: request[:2] == ("cmd", node) and request[2][: len(op)] == op


def journaled(*events: str) -> Callable[[tuple], bool]:
    """A `mover_until` stop: the mover has just journaled one of these events."""
    return lambda request: request[:1] == ("journal",) and request[1] in events


def test_defect_1_a_write_between_the_busykey_comparison_and_the_del_is_kept():
    """Defect 1: after a MIGRATE timeout left k0 on both sides, a client write to the source copy between the DUMPs
    and the DEL must survive (today the DEL drops it: `busykey_compare_and_delete` False fails here)."""
    machine = BusyKeyModel()
    machine.setup(["a", "b", "c"], stranded=False, head=MAX_HEAD)
    assert machine.status == "stopped" and machine.cluster.nodes["b"].data == {"k0": "v0", "k1": "v1"}
    machine.mover(1, False, False)
    mover_until(machine, sent("a", "DUMP", "k0"))
    machine.client(0, "k0")
    checked(machine)
    mover_until(machine, lambda request: False)


def test_defect_2_a_key_created_through_ask_while_a_slot_is_closed_is_not_stranded():
    """Defect 2: the mover crashed right after opening a -> b; on resume, a client's write of a new key follows an
    ASK to b after the repair counted b empty; the key must stay readable (today STABLE strands it on b; with main's
    fix it is unreadable until the move is re-opened; finishing instead of closing keeps it readable)."""
    machine = CloseModel()
    machine.setup(["a", "b", "c"], stranded=False)
    mover_until(machine, sent("a", "SETSLOT", "MIGRATING"))
    machine.mover(0, False, True)
    machine.mover(1, False, False)
    machine.client(0, "k2")
    assert machine.pending[0].asking, "the write of a new key was sent on to b with ASK"
    mover_until(machine, journaled("slot_closed", "slot_closing"))
    machine.client(0, "k0")
    checked(machine)
    mover_until(machine, lambda request: False)


def test_defect_3_an_interrupted_rescue_is_finished_towards_the_owner():
    """Defect 3: the mover crashed after setting IMPORTING on c to rescue its stranded key to the owner a; the resume
    must not read that marker as a move a -> c (today it opens a -> c)."""
    machine = RescueModel()
    machine.setup(["a", "b", "c"], stranded=True)
    mover_until(machine, sent("c", "SETSLOT", "IMPORTING"))
    machine.mover(0, False, True)
    machine.mover(1, False, False)
    mover_until(machine, lambda request: False)
    assert machine.status == "done"
    assert machine.cluster.nodes["b"].data.get("k3") == "stranded"
