"""Resume: repair the open slots an interrupted run left, then go on with what its journal was doing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import current_plan, migrate, new_master_ids
from runbook_lib.cluster.mover import journal_pairs
from runbook_lib.cluster.repair import repair
from runbook_lib.cluster.topology import Topology, observe
from runbook_lib.config import BigKeys, Credentials, Migration
from runbook_lib.exceptions import BadInput, CheckFailed
from runbook_lib.sections.rollback import rollback, rollback_plan

if TYPE_CHECKING:
    from runbook_lib.cluster.mover import Pace


def phase(journal: Journal) -> str:
    """What the journal was doing when it stopped: "rollback" after a rollback_start, else "expansion"."""
    last = journal.last("migration_start", "rollback_start")
    return "rollback" if last and last["event"] == "rollback_start" else "expansion"


def resume(seed: str, creds: Credentials, journal: Journal, settings: Migration, new_addresses: list[str], *,
           apply: bool, bigkeys: BigKeys | None = None, snapshot: dict | None = None, progress: bool = True,
           slots: set[int] | None = None, foreign: bool = False, throttle: "Pace | None" = None) -> dict:
    """Repair this run's open slots (and another tool's only when named by `slots` or `foreign`), then go on with
    whatever the journal was doing: the expansion or a rollback. Without `apply` it only says what it would do.

    Returns phase ("expansion" or "rollback"), repaired (a StepReport), plan, batches, foreign: the open slots of
    another tool that were left alone, described; blocked: the slots still open after the repair (in a dry run, that
    it would leave open), and waiting: why the expansion cannot go on yet ("" when it can: every new master has
    joined). Either stops it after the repair, before any slot moves (the engine refuses to move slots while another
    tool's slot is open). After a rollback it also returns removal and checks, as `rollback` does.
    """
    topo = observe(seed, creds)
    doing = phase(journal)
    if doing == "rollback" and snapshot is None:
        raise CheckFailed("the journal shows an interrupted rollback but the run has no baseline.json")
    waiting = _not_joined(topo, new_addresses) if doing == "expansion" else ""
    repairable = set(journal.open_slots()) | set(slots or ())
    fixed = repair(topo, creds, journal, settings, apply=apply, bigkeys=bigkeys, slots=slots, foreign=foreign)
    topo = observe(seed, creds) if apply else topo
    still_open = sorted({o["slot"] for o in topo.open_slots()})
    blocked = still_open if apply else [] if foreign else [s for s in still_open if s not in repairable]
    out = {"phase": doing, "repaired": fixed, "batches": [], "foreign": fixed.notes, "blocked": blocked,
           "waiting": waiting}
    if blocked or waiting or not apply:
        return out | {"plan": _plan(doing, topo, creds, new_addresses, settings, snapshot, journal)}
    if doing == "rollback":
        done = rollback(topo, creds, snapshot, new_addresses, settings, journal, apply=True, bigkeys=bigkeys,
                        progress=progress, throttle=throttle)
        return out | {"plan": done["plan"], "batches": done["batches"], "removal": done["removal"],
                      "checks": done["checks"]}
    plan, batches = migrate(topo, creds, new_addresses, settings, journal, bigkeys=bigkeys, progress=progress,
                            throttle=throttle)
    return out | {"plan": plan, "batches": batches}


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
