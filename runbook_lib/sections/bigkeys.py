"""Big-key scan: SCAN every shard on an in-sync replica (the master only where there is none), all shards at once,
one pipeline per page, paced overall; sizes per key and per slot, and what they mean for the plan."""

from __future__ import annotations

import heapq
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import redis
from tqdm.auto import tqdm

from runbook_lib.checks import Check
from runbook_lib.cluster.connection import node_client, readonly_client
from runbook_lib.cluster.readers import MAX_LAG_S, ReadSource, read_source
from runbook_lib.cluster.topology import Topology
from runbook_lib.config import BigKeys, Credentials
from runbook_lib.exceptions import CheckFailed
from runbook_lib.progress import wanted
from runbook_lib.sections.keyscan import KeyStat, Pacer, size_page, walk

__all__ = ["KeyStat", "ScanResult", "ShardScan", "scan"]

CHECK_ROWS = 20
MB = 1024 * 1024


@dataclass
class ShardScan:
    """Which node one shard was scanned on, its role, why that node, and the keys it returned."""

    shard_master: str
    node: str
    role: str
    reason: str
    keys: int = 0


@dataclass
class ScanResult:
    """What a scan found: the largest keys, keys and bytes per slot, every key over the threshold, how long it took,
    where each shard was read and how many commands it cost."""

    top: list[KeyStat]
    per_slot: dict[int, dict]
    big: list[KeyStat]
    keys_scanned: int
    seconds: float
    shards: list[ShardScan] = field(default_factory=list)
    commands: int = 0


class _Tally:
    """Running totals shared by the scan's threads: per-slot keys and bytes, keys over the threshold, and a bounded
    heap of the largest keys."""

    def __init__(self, threshold_bytes: int, top_n: int) -> None:
        self.threshold, self.top_n = threshold_bytes, top_n
        self.per_slot: dict[int, dict] = {}
        self.big: dict[tuple[str, str], KeyStat] = {}
        self.heap: list[tuple[int, int, KeyStat]] = []
        self.in_heap: set[tuple[str, str]] = set()
        self.count = 0
        self._offers = 0
        self._lock = threading.Lock()

    def pick(self, sizes: list[int]) -> list[int]:
        """Indexes of the sizes worth a TYPE and length: at or over the threshold, or among the page's `top_n`
        largest that would enter the top list now."""
        floor = self.heap[0][0] if len(self.heap) >= self.top_n and self.heap else -1
        largest = heapq.nlargest(self.top_n, range(len(sizes)), key=sizes.__getitem__) if self.top_n > 0 else []
        return sorted({i for i in largest if sizes[i] > floor} | {i for i, n in enumerate(sizes) if n >= self.threshold})

    def add_page(self, sizes: list[tuple[int, int]], detailed: list[KeyStat]) -> None:
        """Count every (slot, bytes) of a page, and offer its detailed keys to the big list and the top heap."""
        with self._lock:
            for slot, size in sizes:
                totals = self.per_slot.setdefault(slot, {"keys": 0, "bytes": 0})
                totals["keys"] += 1
                totals["bytes"] += size
            self.count += len(sizes)
            for stat in detailed:
                self._offer(stat)

    def _offer(self, stat: KeyStat) -> None:
        ident = (stat.node, stat.key)
        if stat.bytes >= self.threshold:
            self.big[ident] = stat
        if self.top_n <= 0 or ident in self.in_heap:
            return
        self._offers += 1
        entry = (stat.bytes, self._offers, stat)
        if len(self.heap) < self.top_n:
            heapq.heappush(self.heap, entry)
            self.in_heap.add(ident)
        elif stat.bytes > self.heap[0][0]:
            _, _, dropped = heapq.heapreplace(self.heap, entry)
            self.in_heap.discard((dropped.node, dropped.key))
            self.in_heap.add(ident)


def _by_size(stats) -> list[KeyStat]:
    return sorted(stats, key=lambda s: (-s.bytes, s.node, s.key))


def _open(source: ReadSource, creds: Credentials) -> tuple[ReadSource, redis.Redis]:
    """A client on the source's node (READONLY on a replica), and its DBSIZE checked; a replica that refuses READONLY
    (ACL without +readonly) gives way to the master, saying so."""
    if source.role == "master":
        return source, node_client(source.node, creds)
    client = readonly_client(source.node, creds)
    try:
        client.ping()
    except redis.ResponseError as e:
        client.close()
        fallback = ReadSource(source.shard_master, source.shard_master, "master",
                              f"replica {source.node} refused READONLY ({e}); add +readonly to the user's ACL")
        return fallback, node_client(source.shard_master, creds)
    return source, client


def _scan_shard(shard: ShardScan, client: redis.Redis, count: int, pacer: Pacer, tally: _Tally, bar: tqdm,
                stop: threading.Event) -> None:
    """Walk one shard's node page by page into the shared tally, counting its keys on `shard`; keys are named with
    the shard's master, where they live and would move from, whichever node was read."""
    try:
        for returned, page in walk(client, shard.shard_master, count, pacer, tally.pick, stop):
            tally.add_page(page.sizes, page.detailed)
            shard.keys += returned
            bar.update(returned)
    except BaseException:
        stop.set()
        raise
    finally:
        client.close()


def scan(topo: Topology, creds: Credentials, threshold_bytes: int, count: int = 1000, top_n: int = 20,
         max_ops_per_s: float | None = None, progress: bool | None = None,
         max_lag_s: float = MAX_LAG_S) -> ScanResult:
    """Size every key of every shard, each on an in-sync replica (the master where a shard has none, said in
    `shards`), all shards in parallel with one thread each, paced together to `max_ops_per_s` commands.

    A page costs one SCAN and one pipeline of MEMORY USAGE; TYPE and the length only for its keys over the threshold
    or in the running top `top_n`. With `progress` (default: when someone watches, see `runbook_lib.progress`) a bar
    shows the keys scanned of the scanned nodes' DBSIZE.

    SCAN may return a key twice while a node resizes its table or a slot moves; counts are then slight overestimates.
    """
    started = time.monotonic()
    pacer = Pacer(max_ops_per_s)
    tally = _Tally(threshold_bytes, top_n)
    stop = threading.Event()
    opened: list[tuple[ShardScan, redis.Redis]] = []
    try:
        for master in topo.masters():
            source, client = _open(read_source(topo, master, creds, max_lag_s), creds)
            opened.append((ShardScan(source.shard_master, source.node, source.role, source.reason), client))
        total = sum(int(client.dbsize()) for _, client in opened)
        bar = tqdm(total=total, unit="key", desc=f"scanning {len(opened)} shards for big keys",
                   disable=not wanted(progress))
        with bar, ThreadPoolExecutor(max_workers=max(1, len(opened)), thread_name_prefix="bigkeys") as pool:
            futures = [pool.submit(_scan_shard, shard, client, count, pacer, tally, bar, stop)
                       for shard, client in opened]
            for future in futures:
                future.result()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise CheckFailed(f"big-key scan lost a node ({e}); check that every node is reachable and scan again") from None
    except redis.ResponseError as e:
        raise CheckFailed(f"big-key scan failed ({e}); the user needs SCAN, TYPE, MEMORY USAGE, DBSIZE and READONLY "
                          "(ACL)") from None
    finally:
        for _, client in opened:
            client.close()
    top = _by_size(stat for _, _, stat in tally.heap)
    return ScanResult(top=top, per_slot=dict(sorted(tally.per_slot.items())), big=_by_size(tally.big.values()),
                      keys_scanned=tally.count, seconds=time.monotonic() - started,
                      shards=[shard for shard, _ in opened], commands=pacer.sent)


def shard_table(result: ScanResult) -> list[dict]:
    """One row per shard: the node scanned, its role, why, and the keys SCAN returned there."""
    return [asdict(shard) for shard in result.shards]


def keys_per_slot(result: ScanResult) -> dict[int, int]:
    """Keys counted in each slot (only slots with keys), the weight the planner gives each move."""
    return {slot: totals["keys"] for slot, totals in result.per_slot.items()}


def slot_table(result: ScanResult) -> list[dict]:
    """One row per slot with keys: keys, bytes and big keys, heaviest slots first, for notebook tables."""
    big_count: dict[int, int] = {}
    for stat in result.big:
        big_count[stat.slot] = big_count.get(stat.slot, 0) + 1
    rows = [{"slot": slot, "keys": t["keys"], "bytes": t["bytes"], "big_keys": big_count.get(slot, 0)}
            for slot, t in result.per_slot.items()]
    return sorted(rows, key=lambda r: (-r["bytes"], r["slot"]))


def big_keys_in_slots(result: ScanResult, slots: set[int]) -> list[KeyStat]:
    """The big keys that live in these slots, largest first: what would stall a batch moving them."""
    return [stat for stat in result.big if stat.slot in slots]


def slot_bytes(result: ScanResult) -> dict[int, int]:
    """MEMORY USAGE summed per slot (only slots with keys), what the planner's time estimate weighs."""
    return {slot: totals["bytes"] for slot, totals in result.per_slot.items()}


def to_json(result: ScanResult, threshold_bytes: int) -> dict:
    """The scan as JSON for the run folder (bigkeys.json), read back by the planner and the mover's guard."""
    return {"threshold_bytes": threshold_bytes, "keys_scanned": result.keys_scanned,
            "seconds": round(result.seconds, 3), "top": [asdict(s) for s in result.top],
            "big": [asdict(s) for s in result.big], "commands": result.commands,
            "shards": [asdict(s) for s in result.shards],
            "per_slot": {str(slot): totals for slot, totals in result.per_slot.items()}}


def from_json(data: dict) -> ScanResult:
    """A ScanResult back from bigkeys.json."""
    return ScanResult(top=[KeyStat(**s) for s in data["top"]],
                      per_slot={int(slot): totals for slot, totals in data["per_slot"].items()},
                      big=[KeyStat(**s) for s in data["big"]], keys_scanned=data["keys_scanned"],
                      seconds=data["seconds"], shards=[ShardScan(**s) for s in data.get("shards", [])],
                      commands=data.get("commands", 0))


def describe(result: ScanResult, threshold_bytes: int) -> str:
    """One Markdown line on what the scan saw: keys, slots, bytes, the heaviest slot and the big keys."""
    slots = len(result.per_slot)
    total = sum(t["bytes"] for t in result.per_slot.values())
    heaviest = max(result.per_slot.items(), key=lambda item: item[1]["bytes"], default=None)
    line = (f"**{result.keys_scanned}** keys in **{slots}** slots, {total / MB:.1f} MB (MEMORY USAGE), "
            f"scanned in {result.seconds:.1f} s")
    if heaviest:
        line += (f"; heaviest slot {heaviest[0]}: {heaviest[1]['keys']} keys, "
                 f"{heaviest[1]['bytes'] / MB:.2f} MB")
    return line + (f"; **{len(result.big)}** keys at or over {threshold_bytes / MB:g} MB" if result.big
                   else f"; no key at or over {threshold_bytes / MB:g} MB")


def source_checks(result: ScanResult) -> list[Check]:
    """Where each shard was scanned: a pass per shard read on an in-sync replica, a warning per shard read on its
    master (which serves the clients meanwhile), with the reason."""
    return [Check(f"big-key scan of {shard.shard_master}'s shard",
                  "pass" if shard.role == "replica" else "warn",
                  f"scanned on {shard.role} {shard.node} ({shard.reason}), {shard.keys} keys") for shard in result.shards]


def checks(result: ScanResult, settings: BigKeys, slots: set[int] | None = None) -> list[Check]:
    """A warning per key at or over the threshold (in `slots` when given), naming its slot, node and size, and what
    the mover will do with it; a pass when there is none."""
    limit = f"{settings.threshold_bytes / MB:g} MB"
    big = result.big if slots is None else big_keys_in_slots(result, slots)
    if not big:
        where = f"among {result.keys_scanned} keys" if slots is None else f"in the {len(slots)} slots to move"
        return [Check("big keys", "pass", f"no key at or over {limit} {where}")]
    out = []
    for stat in big[:CHECK_ROWS]:
        allowed = settings.allow.get(stat.key)
        then = (f"allowed in bigkeys.allow: the mover moves it alone with a {allowed} ms MIGRATE timeout, and both "
                "masters block meanwhile" if allowed else
                f"the mover stops before slot {stat.slot}: split or delete the key, or allow it in bigkeys.allow")
        out.append(Check(f"big key {stat.key}", "warn", f"{stat.bytes / MB:.1f} MB {stat.type} (length {stat.length}) "
                         f"in slot {stat.slot} on {stat.node}, over {limit}; {then}"))
    if len(big) > CHECK_ROWS:
        out.append(Check("big keys", "warn", f"{len(big) - CHECK_ROWS} more keys at or over {limit}; all are in "
                         "bigkeys.json"))
    return out


def blocking(result: ScanResult, settings: BigKeys, slots: set[int]) -> list[KeyStat]:
    """The big keys in these slots that `bigkeys.allow` does not name: the mover would stop at each (pure)."""
    return [stat for stat in big_keys_in_slots(result, slots) if stat.key not in settings.allow]


def recheck(stats: list[KeyStat], topo: Topology, creds: Credentials, threshold_bytes: int) -> list[KeyStat]:
    """The keys of `stats` still at or over the threshold now, sized again (MEMORY USAGE) on their slot's current
    owner: a key split or deleted since preflight's scan no longer blocks the plan."""
    owners = topo.owners()
    address = {e.id: e.address for e in topo.nodes.values()}
    still = []
    for stat in stats:
        node = address.get(owners[stat.slot] or "", stat.node)
        with node_client(node, creds) as client:
            size = client.memory_usage(stat.key)
        if size is not None and int(size) >= threshold_bytes:
            still.append(KeyStat(key=stat.key, node=node, slot=stat.slot, type=stat.type, length=stat.length,
                                 bytes=int(size)))
    return still


def scan_slots(topo: Topology, creds: Credentials, slots: set[int], threshold_bytes: int, count: int = 1000,
               progress: bool | None = None) -> ScanResult:
    """Size every key of these slots on their owners (CLUSTER GETKEYSINSLOT, then TYPE and MEMORY USAGE): what a
    plan moves, when no preflight scan is at hand."""
    started = time.monotonic()
    tally = _Tally(threshold_bytes, 0)
    owners = topo.owners()
    address = {e.id: e.address for e in topo.nodes.values()}
    by_node: dict[str, list[int]] = {}
    for slot in sorted(slots):
        if owners[slot]:
            by_node.setdefault(address[owners[slot]], []).append(slot)
    pacer = Pacer(None)
    bar = tqdm(total=len(slots), unit="slot", desc="sizing the keys of the slots to move", disable=not wanted(progress))
    with bar:
        for node, node_slots in by_node.items():
            bar.set_postfix_str(node)
            with node_client(node, creds) as client:
                for slot in node_slots:
                    held = int(client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))
                    keys = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, held) if held else []
                    for i in range(0, len(keys), count):
                        page = size_page(client, node, keys[i:i + count], pacer, tally.pick)
                        tally.add_page(page.sizes, page.detailed)
                    bar.update(1)
    return ScanResult(top=[], per_slot=dict(sorted(tally.per_slot.items())), big=_by_size(tally.big.values()),
                      keys_scanned=tally.count, seconds=time.monotonic() - started)


def plan_checks(result: ScanResult | None, settings: BigKeys, slots: set[int], topo: Topology,
                creds: Credentials) -> list[Check]:
    """What the big keys mean for a plan, before any slot moves: a failed check per key over the threshold in a slot
    to move that `bigkeys.allow` does not name (sized again on its owner now), with its size and the ways out; a
    warning per allowed one. Without preflight's scan (`result` None) the slots to move are scanned here."""
    if result is None:
        result = scan_slots(topo, creds, slots, settings.threshold_bytes, count=settings.scan_count)
        scanned = f"sized here: {result.keys_scanned} keys in the {len(slots)} slots to move"
    else:
        scanned = "preflight's scan, bigkeys.json"
    limit = f"{settings.threshold_bytes / MB:g} MB"
    stop = recheck(blocking(result, settings, slots), topo, creds, settings.threshold_bytes)
    allowed = [s for s in big_keys_in_slots(result, slots) if s.key in settings.allow]
    out = [Check(f"big key {stat.key}", "fail",
                 f"{stat.bytes / MB:.1f} MB {stat.type} (length {stat.length}) in slot {stat.slot} on {stat.node}, "
                 f"over bigkeys.threshold_bytes ({limit}), in a slot this plan moves: the mover would stop at it, "
                 f"so nothing moves. Choose: split it into smaller keys or delete it, then run 00_preflight and "
                 f"30_plan again; or allow it in params (bigkeys.allow: {{{stat.key!r}: <MIGRATE timeout ms>}}; both "
                 f"masters block while it moves, and clients' socket timeouts must cover it); or raise "
                 f"bigkeys.threshold_bytes if {limit} is too strict for this cluster") for stat in stop[:CHECK_ROWS]]
    if len(stop) > CHECK_ROWS:
        out.append(Check("big keys", "fail", f"{len(stop) - CHECK_ROWS} more keys over {limit} in slots to move; "
                                             "all are in bigkeys.json"))
    out += [Check(f"big key {stat.key}", "warn",
                  f"{stat.bytes / MB:.1f} MB {stat.type} in slot {stat.slot} on {stat.node}, allowed in bigkeys.allow: "
                  f"the mover moves it alone with a {settings.allow[stat.key]} ms MIGRATE timeout, and both masters "
                  "block meanwhile") for stat in allowed[:CHECK_ROWS]]
    if not out:
        out.append(Check("big keys", "pass", f"no key at or over {limit} that blocks the {len(slots)} slots to move "
                                             f"({scanned})"))
    return out
