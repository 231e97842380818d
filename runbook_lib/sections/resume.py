"""Resume: repair the open slots an interrupted run left, then go on with what its journal was doing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from runbook_lib.checks import StepReport
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import current_plan, migrate, new_master_ids
from runbook_lib.cluster.mover import BatchResult
from runbook_lib.cluster.nodes import journal_pairs
from runbook_lib.cluster.plan import Plan
from runbook_lib.cluster.repair import repair
from runbook_lib.cluster.topology import Topology, observe
from runbook_lib.config import Credentials, Migration, Params, new_master_addresses, new_node_addresses
from runbook_lib.exceptions import BadInput, CheckFailed
from runbook_lib.sections.rollback import RollbackResult, rollback, rollback_plan
from runbook_lib.watch.watchers import discard_probe

if TYPE_CHECKING:
    from runbook_lib.cluster.mover import Pace


@dataclass
class ResumeResult:
    """What a resume did (or would do): the phase it went on with ("expansion" or "rollback"), the repair of open
    slots, the open slots of another tool it left alone (`foreign`, described), the slots still open that stop it
    (`blocked`), why the expansion cannot go on yet (`waiting`, "" when it can), the plan of what remains and the
    batches moved; after a rollback also what the rollback did (`rolled_back`: the removal of the new nodes, the
    probe's keys deleted, the checks of the restored layout)."""

    phase: str
    repaired: StepReport
    plan: Plan
    foreign: list[str] = field(default_factory=list)
    blocked: list[int] = field(default_factory=list)
    waiting: str = ""
    batches: list[BatchResult] = field(default_factory=list)
    rolled_back: RollbackResult | None = None


def phase(journal: Journal) -> str:
    """What the journal was doing when it stopped: "rollback" after a rollback_start, else "expansion"."""
    last = journal.last("migration_start", "rollback_start")
    return "rollback" if last and last["event"] == "rollback_start" else "expansion"


def resume(params: Params, run_dir: Path, *, apply: bool, slots: set[int] | None = None, foreign: bool = False,
           throttle: "Pace | None" = None, progress: bool = True) -> ResumeResult:
    """Repair the open slots of the run in `run_dir` (and another tool's only when named by `slots` or `foreign`),
    then go on with whatever its journal was doing: the expansion or a rollback to the run's before-picture. Without
    `apply` it only says what it would do.

    Blocked (the slots still open after the repair; in a dry run, that it would leave open) or waiting (a new master
    has not joined) stops it after the repair, before any slot moves: the engine refuses to move slots while another
    tool's slot is open.
    """
    journal = Journal(run_dir / "journal.jsonl")
    doing = phase(journal)
    seed, creds, settings, bigkeys = (params.model.cluster.seed, params.credentials(), params.model.migration,
                                      params.model.bigkeys)
    new_addresses = new_node_addresses(params) if doing == "rollback" else new_master_addresses(params)
    baseline = run_dir / "baseline.json"
    snapshot = json.loads(baseline.read_text()) if baseline.exists() else None
    topo = observe(seed, creds)
    if doing == "rollback" and snapshot is None:
        raise CheckFailed("the journal shows an interrupted rollback but the run has no baseline.json")
    waiting = _not_joined(topo, new_addresses) if doing == "expansion" else ""
    repairable = set(journal.open_slots()) | set(slots or ())
    fixed = repair(topo, creds, journal, settings, apply=apply, bigkeys=bigkeys, slots=slots, foreign=foreign)
    topo = observe(seed, creds) if apply else topo
    still_open = sorted({o["slot"] for o in topo.open_slots()})
    blocked = still_open if apply else [] if foreign else [s for s in still_open if s not in repairable]
    found = {"phase": doing, "repaired": fixed, "foreign": fixed.notes, "blocked": blocked, "waiting": waiting}
    if blocked or waiting or not apply:
        return ResumeResult(plan=_plan(doing, topo, creds, new_addresses, settings, snapshot, journal), **found)
    if doing == "rollback":
        done = rollback(topo, creds, snapshot, new_addresses, settings, journal, apply=True, bigkeys=bigkeys,
                        progress=progress, throttle=throttle)
        done = replace(done, probe_keys=discard_probe(params, run_dir))
        return ResumeResult(plan=done.plan, batches=done.batches, rolled_back=done, **found)
    plan, batches = migrate(topo, creds, new_addresses, settings, journal, bigkeys=bigkeys, progress=progress,
                            throttle=throttle)
    return ResumeResult(plan=plan, batches=batches, **found)


def _not_joined(topo: Topology, new_addresses: list[str]) -> str:
    """Why slots cannot move to the new masters yet (one has not joined, or is a replica), or ""."""
    try:
        new_master_ids(topo, new_addresses)
    except BadInput as e:
        return str(e)
    return ""


def _plan(doing: str, topo: Topology, creds: Credentials, new_addresses: list[str], settings: Migration,
          snapshot: dict | None, journal: Journal):
    """What is left to move, from the live slot map (nothing is changed); a rollback follows the failovers the
    journal recorded."""
    if doing == "rollback":
        return rollback_plan(snapshot, topo, settings.slots_per_batch, journal_pairs(journal))
    return current_plan(topo, creds, new_addresses, settings, allow_unjoined=True)
