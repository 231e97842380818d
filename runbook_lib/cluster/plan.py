"""The slot plan (pure): even targets, which slots each old master gives to which new master, cut into batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from runbook_lib.cluster.rounds import INITIAL_MIGRATE_BYTES_PER_S
from runbook_lib.cluster.topology import SLOTS
from runbook_lib.config import Migration
from runbook_lib.exceptions import BadInput


@dataclass(frozen=True)
class Move:
    """One slot to move from a source master to a target master (node ids)."""

    slot: int
    source: str
    target: str


@dataclass
class Plan:
    """Moves grouped into batches, with slot counts per master before and after."""

    batches: list[list[Move]]
    before: dict[str, int]
    after: dict[str, int]
    targets: dict[str, int]
    keys_per_slot: dict[int, int] = field(default_factory=dict)

    @property
    def moves(self) -> list[Move]:
        return [m for b in self.batches for m in b]

    def to_json(self) -> dict:
        return {
            "before": self.before, "after": self.after, "targets": self.targets,
            "moves": len(self.moves),
            "batches": [[asdict(m) for m in b] for b in self.batches],
        }

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        return cls(batches=[[Move(**m) for m in b] for b in data["batches"]], before=data["before"],
                   after=data["after"], targets=data["targets"])


def even_targets(current: dict[str, int], new_ids: list[str], total: int = SLOTS) -> dict[str, int]:
    """Slots each master should hold: total / masters, the remainder kept by the old masters holding most."""
    ids = list(current) + [n for n in new_ids if n not in current]
    share, rest = divmod(total, len(ids))
    targets = {i: share for i in ids}
    by_size = sorted(ids, key=lambda i: (i in new_ids, -current.get(i, 0), i))
    for i in by_size[:rest]:
        targets[i] += 1
    return targets


def plan_expansion(owned: dict[str, set[int]], new_ids: list[str], slots_per_batch: int,
                   keys_per_slot: dict[int, int] | None = None, warmup: bool = True) -> Plan:
    """Plan moves from old masters (ids in `owned` not in `new_ids`) to the new masters only.

    Each donor gives away its highest slots above its even share; gifts are interleaved across donors so every
    batch draws on all of them. With `warmup`, each new master that owns nothing first gets one slot alone, the one
    with the fewest keys, so clients learn the new node through a short move.
    """
    if not new_ids:
        raise BadInput("no new masters to plan for")
    if slots_per_batch < 1:
        raise BadInput("slots_per_batch must be at least 1")
    all_slots = [s for slots in owned.values() for s in slots]
    if len(all_slots) != len(set(all_slots)):
        raise BadInput("the slot map claims some slots twice; run `runbook check` and repair first")
    if len(all_slots) != SLOTS:
        raise BadInput(f"the masters own {len(all_slots)} slots, not {SLOTS}; the cluster must be fully covered")
    current = {i: len(s) for i, s in owned.items()}
    for n in new_ids:
        current.setdefault(n, 0)
    targets = even_targets(current, new_ids)
    donors = sorted((i for i in current if i not in new_ids and current[i] > targets[i]))
    gifts = [[(s, d) for s in sorted(sorted(owned[d], reverse=True)[: current[d] - targets[d]])] for d in donors]
    deficits = [(n, targets[n] - current[n]) for n in new_ids if targets[n] > current[n]]

    stream = _interleave(gifts)
    pos = 0
    per_target: dict[str, list[Move]] = {}
    for target, need in deficits:
        per_target[target] = [Move(slot=s, source=src, target=target) for s, src in stream[pos: pos + need]]
        pos += need
    moves = _interleave(list(per_target.values()))

    keys = keys_per_slot or {}
    batches: list[list[Move]] = []
    if warmup:
        for target in per_target:
            if current[target] == 0 and per_target[target]:
                first = min(per_target[target], key=lambda m: (keys.get(m.slot, 0), m.slot))
                moves.remove(first)
                batches.append([first])
    for i in range(0, len(moves), slots_per_batch):
        batches.append(moves[i: i + slots_per_batch])

    after = dict(current)
    for m in (m for b in batches for m in b):
        after[m.source] -= 1
        after[m.target] += 1
    plan = Plan(batches=batches, before=current, after=after, targets=targets, keys_per_slot=dict(keys))
    verify_plan(plan, owned)
    return plan


def _interleave(lists: list[list]) -> list:
    """Round-robin merge of several lists, so consecutive items come from different lists."""
    longest = max((len(items) for items in lists), default=0)
    return [items[i] for i in range(longest) for items in lists if i < len(items)]


def verify_plan(plan: Plan, owned: dict[str, set[int]]) -> None:
    """Refuse a plan that does not add up: a slot moved twice, from a non-owner, or totals off 16384."""
    seen: set[int] = set()
    for m in plan.moves:
        if m.slot in seen:
            raise BadInput(f"plan moves slot {m.slot} twice")
        seen.add(m.slot)
        if m.slot not in owned.get(m.source, set()):
            raise BadInput(f"plan moves slot {m.slot} from {m.source}, which does not own it")
        if m.source == m.target:
            raise BadInput(f"plan moves slot {m.slot} onto its own owner")
    if sum(plan.after.values()) != SLOTS:
        raise BadInput(f"plan ends with {sum(plan.after.values())} slots, not {SLOTS}")


@dataclass(frozen=True)
class MoveRates:
    """How fast the mover works, for time estimates: a fixed cost per slot, plus a cost per key and per byte.
    Across a network each slot costs a few round trips more: time a few batches there and pass the rates you see."""

    # Measured with the sandbox on one host (loopback, Redis 7.0.15, 1000 keys per MIGRATE, 32 slots in flight, three
    # old masters giving 4096 slots to one new master; two runs each, on a shared machine): no keys 0.6-0.8 s,
    # estimated 0.7 s; the sandbox's mixed data (50 000 keys, 47 MB) 1.3-1.5 s, about 35 000 keys/s, estimated 1.3 s;
    # 115 MB in 100 kB values 0.84-0.94 s, estimated 1.0 s; 250 000 keys of 16 bytes 1.7-2.2 s, estimated 3.3 s
    # (small strings move faster than the mix, so the estimate errs long there).
    slot_s: float = 0.00017
    keys_per_s: float = 100_000.0
    bytes_per_s: float = 400_000_000.0

    def __post_init__(self) -> None:
        if self.slot_s < 0 or self.keys_per_s <= 0 or self.bytes_per_s <= 0:
            raise BadInput(f"move rates must be positive (slot_s may be 0): {self}")


def estimate_seconds(slots: int, keys: int, nbytes: int = 0, rates: MoveRates = MoveRates()) -> float:
    """Estimated wall time to move `slots` slots holding `keys` keys of `nbytes` bytes (MEMORY USAGE) in all."""
    return slots * rates.slot_s + keys / rates.keys_per_s + nbytes / rates.bytes_per_s


def batch_estimates(plan: Plan, slot_bytes: dict[int, int] | None = None,
                    rates: MoveRates = MoveRates()) -> list[float]:
    """Estimated seconds per batch from the plan's keys per slot, and bytes per slot when known (big-key scan)."""
    slot_bytes = slot_bytes or {}
    return [estimate_seconds(len(batch), sum(plan.keys_per_slot.get(m.slot, 0) for m in batch),
                             sum(slot_bytes.get(m.slot, 0) for m in batch), rates) for batch in plan.batches]


def estimate(plan: Plan, slot_bytes: dict[int, int] | None = None, rates: MoveRates = MoveRates(),
             pause_s: float = 0.0, max_slots_per_s: float = 0.0) -> dict:
    """The plan's time estimate as a record for plan-estimate.json: total and per-batch seconds (the pauses between
    batches included in the total, a batch no shorter than its slots at `max_slots_per_s`), the rates used, and
    whether bytes per slot were known."""
    batches = batch_estimates(plan, slot_bytes, rates)
    if max_slots_per_s > 0:
        batches = [max(seconds, len(batch) / max_slots_per_s) for seconds, batch in zip(batches, plan.batches)]
    return {"seconds": sum(batches) + pause_s * max(len(batches) - 1, 0), "batches": batches, "rates": asdict(rates),
            "pause_s": pause_s, "max_slots_per_s": max_slots_per_s, "bytes_known": slot_bytes is not None}


def paced_estimate(plan: Plan, settings: Migration, achieved: dict | None, source: str = "",
                   slot_bytes: dict[int, int] | None = None) -> dict:
    """The time a budget pace needs for the plan: at the slots/s, keys/s and (with bytes per slot from the big-key
    scan) bytes/s the last migration on this cluster achieved (`achieved`, from the journal of run folder `source`),
    whichever of them takes longest, else at the open-loop pace (`open_loop_seconds`); the record says which
    (pure)."""
    keys = sum(plan.keys_per_slot.get(m.slot, 0) for m in plan.moves)
    nbytes = sum(slot_bytes.get(m.slot, 0) for m in plan.moves) if slot_bytes is not None else None
    slots = len(plan.moves)
    if achieved:
        by = {"slots": slots / achieved["slots_per_s"],
              "keys": keys / achieved["keys_per_s"] if achieved["keys_per_s"] else 0.0,
              "bytes": nbytes / achieved["bytes_per_s"] if nbytes and achieved.get("bytes_per_s") else 0.0}
        seconds = max(by.values())
        rate = (f"{achieved['slots_per_s']:.1f} slots/s, {achieved['keys_per_s']:,.0f} keys/s"
                + (f", {achieved['bytes_per_s'] / 1e6:,.2f} MB/s" if achieved.get("bytes_per_s") else ""))
        basis = (f"at the pace the budget allowed in the last migration on this cluster (run {source}: {rate} over "
                 f"{achieved['seconds']:.0f} s); its {max(by, key=by.get)} take longest")
    else:
        cautious = slots / settings.start_slots_per_s
        seconds = open_loop_seconds(plan, settings, slot_bytes)
        basis = ("at the open-loop pace of the budget: the slots at `max_slots_per_s`"
                 + (", each source's bytes at the duty cycle's share of an assumed 20 MB/s MIGRATE throughput (not yet "
                    "measured on this cluster)" if slot_bytes is not None and settings.max_duty_pct else "")
                 + ", whichever takes longer, plus the quiet spells. No earlier migration on this cluster was found in "
                 "the report folder; the governor moves slower wherever the clients' latency asks it to, and at its "
                 f"cautious start pace ({settings.start_slots_per_s:g} slots/s) it would take {cautious:.0f} s")
    return {"seconds": seconds, "slots": slots, "keys": keys, "bytes": nbytes, "basis": basis, "achieved": achieved,
            "from_run": source or None}


def open_loop_seconds(plan: Plan, settings: Migration, slot_bytes: dict[int, int] | None = None,
                      bytes_per_blocked_s: float = INITIAL_MIGRATE_BYTES_PER_S) -> float:
    """The time the budget pace takes when the clients never ask it to slow down (pure): its slots at the
    `max_slots_per_s` ceiling or, with bytes per slot and a duty cycle, the heaviest source's MIGRATE time at
    `bytes_per_blocked_s` spread over that share, whichever is longer; plus the quiet spells' share."""
    seconds = len(plan.moves) / settings.max_slots_per_s if settings.max_slots_per_s else 0.0
    if slot_bytes is not None and settings.max_duty_pct:
        rows = duty_table(plan, slot_bytes, bytes_per_blocked_s, (settings.max_duty_pct,))
        seconds = max(seconds, rows[0]["at_least_s"])
    quiet = settings.quiet_s / settings.quiet_every_s if settings.quiet_every_s else 0.0
    return seconds * (1 + quiet)


DUTY_CYCLES_PCT = (1.0, 5.0, 10.0, 25.0)
"""The duty cycles the 30_plan table prices: 1 % is what p99 tolerates when a MIGRATE blocks a source for longer
than the budget's headroom (about one request in a hundred may meet one)."""


def duty_table(plan: Plan, slot_bytes: dict[int, int], bytes_per_blocked_s: float,
               duties_pct: tuple[float, ...] = DUTY_CYCLES_PCT) -> list[dict]:
    """How long the MIGRATEs alone need at each duty cycle (the share of time a source may spend blocked by them):
    each source's bytes at `bytes_per_blocked_s` (measured in an earlier migration on this cluster), spread so that
    it is blocked at most that share of the time, the sources in parallel (pure). A floor: slot hand-overs, the quiet
    spells and the governor's back-offs add to it."""
    per_source: dict[str, int] = {}
    for m in plan.moves:
        per_source[m.source] = per_source.get(m.source, 0) + slot_bytes.get(m.slot, 0)
    heaviest = max(per_source.values(), default=0)
    blocked_s = heaviest / bytes_per_blocked_s if bytes_per_blocked_s > 0 else 0.0
    return [{"duty_cycle_pct": d, "heaviest_source_MB": round(heaviest / 1e6, 1),
             "seconds_blocked": round(blocked_s, 1), "at_least_s": round(blocked_s / (d / 100), 0)}
            for d in duties_pct]


def describe_estimate(record: dict) -> str:
    """The estimate in one Markdown sentence, saying which rates it used and whether it knew the bytes."""
    if record.get("basis"):
        return (f"Estimated **{record['seconds']:.0f} s** for {record['slots']} slots and {record['keys']:,} keys "
                f"under the budget pace, {record['basis']}. The batches below give the mover's own cost at full "
                "speed; the pace adds the waits that keep the clients within their budget.")
    r = record["rates"]
    pace = record.get("max_slots_per_s", 0.0)
    text = (f"Estimated **{record['seconds']:.1f} s** for {len(record['batches'])} batches "
            f"(pauses of {record['pause_s']:g} s between batches included"
            + (f", at most {pace:g} slots/s" if pace else "") + f"), at {r['slot_s'] * 1000:g} ms per slot, "
            f"{r['keys_per_s']:,.0f} keys/s and {r['bytes_per_s'] / 1e6:,.0f} MB/s. ")
    return text + ("Bytes per slot come from preflight's `bigkeys.json`." if record["bytes_known"] else
                   "This run folder has no `bigkeys.json` (run 00_preflight first): the estimate counts slots and keys "
                   "only.")


def batch_summary(plan: Plan, names: dict[str, str] | None = None, slot_bytes: dict[int, int] | None = None,
                  rates: MoveRates = MoveRates()) -> list[dict]:
    """One row per batch: slots, sources, targets, estimated keys (and MB when bytes per slot are given) and
    estimated seconds, for tables."""
    names = names or {}
    rows = []
    for i, (batch, seconds) in enumerate(zip(plan.batches, batch_estimates(plan, slot_bytes, rates)), start=1):
        row = {
            "batch": i, "slots": len(batch),
            "sources": ", ".join(sorted({names.get(m.source, m.source) for m in batch})),
            "targets": ", ".join(sorted({names.get(m.target, m.target) for m in batch})),
            "keys (est.)": sum(plan.keys_per_slot.get(m.slot, 0) for m in batch),
        }
        if slot_bytes is not None:
            row["MB (est.)"] = round(sum(slot_bytes.get(m.slot, 0) for m in batch) / 1048576, 2)
        row["seconds (est.)"] = round(seconds, 2)
        rows.append(row)
    return rows
