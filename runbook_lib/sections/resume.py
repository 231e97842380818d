"""Resume: repair the open slots an interrupted run left, then go on with what its journal was doing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import current_plan, migrate
from runbook_lib.cluster.repair import repair
from runbook_lib.cluster.topology import observe
from runbook_lib.config import BigKeys, Credentials, Migration
from runbook_lib.exceptions import CheckFailed
from runbook_lib.sections.rollback import rollback

if TYPE_CHECKING:
    from runbook_lib.watch.throttle import Throttle


def resume(seed: str, creds: Credentials, journal: Journal, settings: Migration, new_addresses: list[str], *,
           apply: bool, bigkeys: BigKeys | None = None, snapshot: dict | None = None, progress: bool = True,
           slots: set[int] | None = None, foreign: bool = False, throttle: "Throttle | None" = None) -> dict:
    """Repair this run's open slots (and another tool's only when named by `slots` or `foreign`), then go on with
    whatever the journal was doing: the expansion or a rollback. Without `apply` it only says what it would do.

    Returns phase ("expansion" or "rollback"), repaired (a StepReport), plan, batches, and foreign: the open slots
    of another tool that were left alone, described.
    """
    topo = observe(seed, creds)
    fixed = repair(topo, creds, journal, settings, apply=apply, bigkeys=bigkeys, slots=slots, foreign=foreign)
    topo = observe(seed, creds) if apply else topo
    phase = journal.last("migration_start", "rollback_start")
    if phase and phase["event"] == "rollback_start":
        if snapshot is None:
            raise CheckFailed("the journal shows an interrupted rollback but the run has no baseline.json")
        out = rollback(topo, creds, snapshot, new_addresses, settings, journal, apply=apply, progress=progress)
        return {"phase": "rollback", "repaired": fixed, "plan": out["plan"], "batches": out["batches"],
                "foreign": fixed.notes}
    if not apply:
        return {"phase": "expansion", "repaired": fixed, "batches": [], "foreign": fixed.notes,
                "plan": current_plan(topo, creds, new_addresses, settings, allow_unjoined=True)}
    plan, batches = migrate(topo, creds, new_addresses, settings, journal, bigkeys=bigkeys, progress=progress,
                            throttle=throttle)
    return {"phase": "expansion", "repaired": fixed, "plan": plan, "batches": batches, "foreign": fixed.notes}
