"""The one rule for "may this step change that cluster": `apply: true` and a `confirm_cluster` that names it.

Every entry point that changes a cluster (the notebooks through `Section.confirm`, `runbook resume`, `runbook
rollback`) asks this, so a params file pointed at the wrong cluster changes nothing anywhere.
"""

from __future__ import annotations

from runbook_lib.cluster.topology import Topology
from runbook_lib.config import Params
from runbook_lib.exceptions import BadInput

MIN_ID_PREFIX = 8
"""The shortest seed node id prefix `confirm_cluster` may give (8 hex characters, as CLUSTER NODES tools print)."""


def names_cluster(expected: str, seed: str, seed_id: str) -> bool:
    """Whether `expected` names the cluster: the seed address exactly, or at least 8 leading characters of the seed
    node's id (pure)."""
    if not expected:
        return False
    return expected == seed or (len(expected) >= MIN_ID_PREFIX and seed_id.startswith(expected))


def confirm(params: Params, topo: Topology) -> bool:
    """Whether to act: False with `apply: false` (a dry run), True when `confirm_cluster` names the observed cluster;
    raises BadInput (exit 2, nothing changed) when apply is set and it does not."""
    if not params.model.apply:
        return False
    expected = params.model.confirm_cluster
    seed = params.model.cluster.seed
    seed_id = topo.reference.myself.id
    if names_cluster(expected, seed, seed_id):
        return True
    what = (f"{expected!r} does not name the cluster at {seed}" if expected
            else "is empty, and apply: true needs it")
    raise BadInput(f"{params.path}: confirm_cluster: {what} (give the seed address {seed} or at least "
                   f"{MIN_ID_PREFIX} characters of the seed node id {seed_id}); nothing was changed")
