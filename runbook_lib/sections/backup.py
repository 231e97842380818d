"""Backups before the change: BGSAVE on every replica (the master where a shard has none) with a timeout that follows
the node's size, each RDB located and hashed where this host can read it, copied only when small or asked to, and how
to restore them."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
from tqdm.auto import tqdm

from runbook_lib.checks import Check
from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.topology import NodeEntry, Topology
from runbook_lib.config import Backup, Credentials, parse_address
from runbook_lib.exceptions import CheckFailed
from runbook_lib.files import sha256_file
from runbook_lib.progress import wanted
from runbook_lib.sections.host import is_local, rdb_copy_hint

POLL_S = 0.2
GB = 1024 ** 3
MB = 1024 * 1024


@dataclass
class BackupRecord:
    """One node's backup of its shard: which node saved it, LASTSAVE before and after, where its RDB is (`location`,
    host:path) with its size and sha256 (None where this host cannot read it), the copy when one was made and why or
    why not (`copy`), the node's save points (which would overwrite an RDB left in place), and the timeout used."""

    shard_master: str
    node: str
    role: str
    lastsave_before: int
    lastsave_after: int
    status: str
    rdb_path: str | None
    copied_to: str | None
    bytes: int | None
    sha256: str | None
    keys: int
    location: str | None = None
    copy: str = ""
    save_points: str | None = None
    timeout_s: float = 0.0


def save_timeout(used_memory: int, settings: Backup) -> float:
    """How long one node's save may take: `timeout_s` when set, else `timeout_floor_s` plus `timeout_per_gb_s` per GB
    of its used_memory (pure)."""
    if settings.timeout_s is not None:
        return settings.timeout_s
    return settings.timeout_floor_s + settings.timeout_per_gb_s * used_memory / GB


def copy_decision(size: int, settings: Backup) -> tuple[bool, str]:
    """Whether to copy an RDB of `size` bytes into the backup folder, and why (pure)."""
    if settings.copy_mode == "always":
        return True, "copied (backup.copy: always)"
    if settings.copy_mode == "never":
        return False, "left in place (backup.copy: never)"
    limit = f"{settings.copy_max_bytes / MB:g} MB"
    if size <= settings.copy_max_bytes:
        return True, f"copied (backup.copy: auto, at most {limit})"
    return False, f"left in place (backup.copy: auto, over {limit})"


def _pick_nodes(topo: Topology, master: NodeEntry, creds: Credentials) -> list[NodeEntry]:
    """Every healthy replica of the shard whose link to the master is up (a lagging copy is no backup); the master
    alone when there is none."""
    chosen = []
    for replica in topo.replicas_of(master.id):
        if not replica.healthy or replica.address in topo.unreachable:
            continue
        try:
            with node_client(replica.address, creds, timeout=5.0) as client:
                link = client.info("replication").get("master_link_status")
        except (redis.RedisError, OSError):
            continue
        if link == "up":
            chosen.append(replica)
    return chosen or [master]


def _show_save(bar: tqdm, info: dict, waiting: str) -> None:
    """A node's save on its bar: keys written of the keys to write while its BGSAVE runs, else what it waits for."""
    if info.get("rdb_bgsave_in_progress"):
        total = int(info.get("current_save_keys_total") or 0)
        if total:
            bar.total = total
            bar.n = int(info.get("current_save_keys_processed") or 0)
        bar.set_postfix_str(f"saving, {int(info.get('rdb_current_bgsave_time_sec') or 0)} s", refresh=False)
    else:
        bar.set_postfix_str(waiting, refresh=False)
    bar.refresh()


def _wait_idle(client: redis.Redis, address: str, deadline: float, timeout_s: float, bar: tqdm,
               waiting: str = "waiting for a save or AOF rewrite already running") -> dict:
    """Poll INFO persistence until no RDB save or AOF rewrite runs, showing it on `bar`; returns the last INFO."""
    while True:
        info = client.info("persistence")
        if not info.get("rdb_bgsave_in_progress") and not info.get("aof_rewrite_in_progress"):
            return info
        _show_save(bar, info, waiting)
        if time.monotonic() > deadline:
            raise CheckFailed(f"{address}: a BGSAVE or AOF rewrite is still running after {timeout_s:.0f}s "
                              "(the timeout follows the node's used_memory); raise backup.timeout_per_gb_s, or set "
                              "backup.timeout_s, in params, or check the node's log for a slow disk")
        time.sleep(POLL_S)


def _start_bgsave(client: redis.Redis, address: str, deadline: float, timeout_s: float, bar: tqdm) -> int:
    """Send BGSAVE (after any save or rewrite already running) with DBSIZE right behind it; returns that DBSIZE."""
    while True:
        pipe = client.pipeline(transaction=False)
        pipe.bgsave()
        pipe.dbsize()
        started, keys = pipe.execute(raise_on_error=False)
        if not isinstance(started, Exception):
            return int(keys)
        text = str(started)
        if "in progress" not in text and "can't BGSAVE right now" not in text:
            raise CheckFailed(f"{address}: BGSAVE refused ({text}); check free memory and disk space on the node "
                              "(see its log), then run the backup again")
        _wait_idle(client, address, deadline, timeout_s, bar)


def _wait_caught_up(master: redis.Redis, replica: redis.Redis, address: str, timeout_s: float,
                    bar: tqdm) -> None:
    """Wait until the replica has applied everything its master had written when we asked, so the backup is current."""
    target = int(master.info("replication").get("master_repl_offset", 0))
    deadline = time.time() + timeout_s
    while (offset := int(replica.info("replication").get("slave_repl_offset", 0))) < target:
        bar.set_postfix_str(f"waiting for the replica to catch up ({target - offset} bytes behind)")
        if time.time() > deadline:
            raise CheckFailed(f"{address}: the replica did not catch up with its master within {timeout_s:.0f}s; "
                              "a backup from it would be stale")
        time.sleep(0.05)


def _save(client: redis.Redis, address: str, timeout_s: float, bar: tqdm) -> tuple[int, int, int]:
    """BGSAVE and wait until it finished and LASTSAVE moved, showing its progress on `bar`; returns (lastsave before,
    after, keys saved)."""
    deadline = time.monotonic() + timeout_s
    before = int(client.lastsave())
    server_now = int(client.time()[0])
    if server_now <= before:
        time.sleep(before + 1 - server_now)
    keys = _start_bgsave(client, address, deadline, timeout_s, bar)
    bar.total, bar.n = keys, 0
    while True:
        info = _wait_idle(client, address, deadline, timeout_s, bar, waiting="waiting for an AOF rewrite to end")
        status = info.get("rdb_last_bgsave_status")
        if status != "ok":
            raise CheckFailed(f"{address}: BGSAVE failed (rdb_last_bgsave_status:{status}); see the node's log "
                              "(disk full? permissions on its dir?) and run the backup again")
        after = int(client.lastsave())
        if after > before:
            bar.n = bar.total or 0
            bar.set_postfix_str(f"saved in {int(info.get('rdb_last_bgsave_time_sec') or 0)} s")
            return before, after, keys
        if time.monotonic() > deadline:
            raise CheckFailed(f"{address}: LASTSAVE did not advance within {timeout_s:.0f}s of BGSAVE; "
                              "check the node's log and run the backup again")
        time.sleep(POLL_S)


def _rdb_path(client: redis.Redis) -> tuple[str | None, str]:
    """The node's RDB file from CONFIG GET dir and dbfilename, or None with the reason when CONFIG is refused."""
    try:
        values = [next(iter(client.config_get(name).values())) for name in ("dir", "dbfilename")]
    except redis.ResponseError as e:
        return None, str(e)
    folder, name = (v.decode() if isinstance(v, bytes) else str(v) for v in values)
    return str(Path(folder) / name), ""


def _save_points(client: redis.Redis) -> str | None:
    """The node's `save` setting ("" when it never saves on its own), None when CONFIG GET is refused."""
    try:
        value = next(iter(client.config_get("save").values()), b"")
    except redis.ResponseError:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _copy(source: str, target: Path, show: bool) -> None:
    """Copy an RDB, with a bar in bytes when `show`."""
    size = Path(source).stat().st_size
    with open(source, "rb") as raw, open(target, "wb") as out:
        with tqdm.wrapattr(raw, "read", total=size, desc=f"copying {Path(source).name}", unit="B", unit_scale=True,
                           unit_divisor=1024, leave=False, disable=not show) as src:
            shutil.copyfileobj(src, out, length=1024 * 1024)


def _place(record: BackupRecord, dest: Path, settings: Backup, show: bool) -> None:
    """Where the record's RDB is, and its size and sha256 where this host can read it; copied into `dest` when
    `settings` say so."""
    host, port = parse_address(record.node)
    record.location = f"{host}:{record.rdb_path}" if record.rdb_path else None
    if record.rdb_path is None:
        return
    if not is_local(host):
        record.copy = (f"on another host, not readable from here (size and sha256 unknown): "
                       f"{rdb_copy_hint(record.node, record.rdb_path, str(dest))}")
        return
    source = Path(record.rdb_path)
    try:
        size = source.stat().st_size
        wanted_copy, record.copy = copy_decision(size, settings)
        if not wanted_copy:
            record.bytes, record.sha256 = size, sha256_file(source)
            return
        target = dest / f"{host}_{port}.rdb"
        _copy(record.rdb_path, target, show)
    except OSError as e:
        record.status = f"ok (local, but reading or copying the RDB failed: {e}; copy it yourself)"
        return
    record.copied_to, record.bytes, record.sha256 = str(target), target.stat().st_size, sha256_file(target)


def backup(topo: Topology, creds: Credentials, dest: Path, settings: Backup | None = None,
           progress: bool | None = None) -> list[BackupRecord]:
    """BGSAVE every in-sync replica (the master only where a shard has none, so masters don't fork), then locate and
    hash each RDB, copying it to dest as `settings` say (default: `Backup()`, copy when at most 64 MB).

    Writes dest/backups.json. Nodes are saved one after another; each save's timeout follows its node's used_memory
    (`save_timeout`). With `progress` (default: when someone watches, see `runbook_lib.progress`) a bar per node shows
    what it waits for, then the keys saved of its DBSIZE, then the RDB copied in bytes.
    """
    settings = settings or Backup()
    show = wanted(progress)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    owned = topo.slots_by_master()
    todo = [(m, node) for m in topo.masters() if owned.get(m.id) for node in _pick_nodes(topo, m, creds)]
    records = []
    for master, node in tqdm(todo, unit="node", desc="backing up (BGSAVE)", disable=not show):
        role = "master" if node.id == master.id else "replica"
        client = node_client(node.address, creds, timeout=30.0)
        client.set_response_callback("LASTSAVE", int)
        bar = tqdm(total=None, unit="key", desc=f"BGSAVE {role} {node.address}", leave=False, disable=not show)
        try:
            timeout_s = save_timeout(int(client.info("memory").get("used_memory", 0)), settings)
            if role == "replica":
                _wait_caught_up(node_client(master.address, creds, timeout=10.0), client, node.address, timeout_s,
                                bar)
            before, after, keys = _save(client, node.address, timeout_s, bar)
            rdb_path, config_problem = _rdb_path(client)
            save_points = _save_points(client)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise CheckFailed(f"{node.address}: lost the connection during the backup ({e}); check the node and "
                              "run the backup again") from None
        except redis.ResponseError as e:
            raise CheckFailed(f"{node.address}: backup failed ({e}); the user needs LASTSAVE, BGSAVE, INFO, DBSIZE "
                              "and CONFIG GET (ACL)") from None
        finally:
            bar.close()
            client.close()
        record = BackupRecord(shard_master=master.address, node=node.address, role=role, lastsave_before=before,
                              lastsave_after=after, status="ok", rdb_path=rdb_path, copied_to=None, bytes=None,
                              sha256=None, keys=keys, save_points=save_points, timeout_s=round(timeout_s, 1))
        if rdb_path is None:
            record.status = f"ok (CONFIG GET refused: {config_problem}; find and copy the RDB yourself)"
        else:
            _place(record, dest, settings, show)
        records.append(record)
    (dest / "backups.json").write_text(json.dumps([asdict(r) for r in records], indent=2))
    return records


def targets(topo: Topology, creds: Credentials) -> list[dict]:
    """Which nodes of each shard a backup would save (for a dry run)."""
    owned = topo.slots_by_master()
    rows = []
    for master in (m for m in topo.masters() if owned.get(m.id)):
        for node in _pick_nodes(topo, master, creds):
                rows.append({"shard_master": master.address, "node": node.address,
                         "role": "master" if node.id == master.id else "replica"})
    return rows


def _where(r: BackupRecord) -> tuple[str, str]:
    """The check status and the words for where one record's RDB is: copied here, left on the node (hashed), or on a
    host this one cannot read."""
    if r.copied_to:
        return "pass", f"{r.copy} to {r.copied_to} ({r.bytes} bytes, sha256 {r.sha256[:12]})"
    if r.location is None:
        return "warn", "RDB location unknown"
    if r.sha256 is None:
        return "warn", f"RDB at {r.location}, {r.copy}"
    kept = (f"the node's save points ({r.save_points}) will overwrite it: copy it off the node now" if r.save_points
            else "the node's next save overwrites it: keep a copy before the change")
    return ("warn" if r.save_points else "pass"), (f"RDB {r.copy} at {r.location} ({r.bytes} bytes, sha256 "
                                                   f"{r.sha256[:12]}); {kept}")


def checks(records: list[BackupRecord]) -> list[Check]:
    """One check per saved node: a verified BGSAVE, and where its RDB is (copied here, or left on the node with its
    size and sha256); a warning when it is on a host this one cannot read, or will be overwritten by the node's save
    points."""
    out = []
    for r in records:
        status, where = _where(r)
        out.append(Check(f"backup on {r.node} (shard of {r.shard_master})", status if r.status == "ok" else "warn",
                         f"BGSAVE on {r.role} {r.node}: {r.status}, {r.keys} keys; {where}"))
    return out


def _file_line(r: BackupRecord) -> str:
    """Where one record's RDB is for the restore instructions, with the sha256 to check it against."""
    if r.copied_to:
        return f"{r.copied_to}  sha256 {r.sha256}  ({r.bytes} bytes; copied from {r.location})"
    if r.location is None:
        return "(path unknown: CONFIG GET was refused; find the node's <dir>/<dbfilename>)"
    if r.sha256:
        return (f"{r.location}  sha256 {r.sha256}  ({r.bytes} bytes; not copied, it stays on the node: keep a copy "
                "before the node saves again, which replaces it)")
    return (f"{r.location}  (on another host, not hashed from here: run `sha256sum {r.rdb_path}` there now, note it, "
            "and keep a copy before the node saves again)")


def restore_instructions(records: list[BackupRecord]) -> str:
    """A plain-text procedure to restore a shard from its RDB, naming every file (copied here or left on its node,
    host:path) with its sha256."""
    lines = ["Backups (one RDB per saved node; each holds only the keys of the slots its shard owned when saved,",
             "and the RDBs of one shard's replicas hold the same data: restore a shard from one of them):"]
    for r in records:
        lines.append(f"  shard of master {r.shard_master}: saved on {r.role} {r.node}, {r.keys} keys, "
                     f"LASTSAVE {r.lastsave_after}")
        lines.append(f"    {_file_line(r)}")
    lines += [
        "",
        "A file left on its node (host:path above) is replaced by that node's next save: restore from the copy",
        "you kept, never from the path once the node's LASTSAVE is past the one above.",
        "",
        "To restore one shard (its slots are unavailable meanwhile):",
        "  1. Check the file: `sha256sum <file>` must print the sha256 above. A file left on its node (host:path)",
        "     is first copied off that node (`scp`, then `sha256sum` again): step 7 removes the replicas' RDBs.",
        "  2. Restore into the master of that shard, and only while it owns exactly the slots it owned at backup",
        "     time (see the run's topology snapshot). If slots moved since, move them back first or use the import",
        "     below: a node that loads keys of slots it does not own leaves those slots open (importing).",
        "  3. Stop the shard's replicas first (so none is promoted), then the master, with `SHUTDOWN NOSAVE`",
        "     (a plain SHUTDOWN would overwrite the RDB with the current data).",
        "  4. On the master, copy the file to <dir>/<dbfilename> (`CONFIG GET dir`, `CONFIG GET dbfilename`;",
        "     usually dump.rdb), owned by the redis user. Keep nodes.conf: it holds the node's id and slots.",
        "  5. If the master runs with appendonly yes, move its AOF (appendonlydir) aside AND set appendonly no in",
        "     its config for this start: with appendonly yes Redis loads only the AOF, and with no AOF it starts",
        "     empty, ignoring the RDB. After step 6, `CONFIG SET appendonly yes` (rebuilds the AOF from memory)",
        "     and `CONFIG REWRITE` turn the AOF back on.",
        "  6. Start the master; `DBSIZE` must equal the keys above, and `CLUSTER INFO` show cluster_state:ok.",
        "  7. On each replica remove its RDB and AOF (keep nodes.conf) and start it: it takes a full copy from",
        "     the restored master. Confirm with `redis-cli --cluster check <any node>`.",
        "",
        "Without stopping any node: load the RDB into a spare standalone redis-server (not cluster mode:",
        "`redis-server --port <p> --dir <folder holding the file as dump.rdb> --appendonly no --save ''`), check its",
        "DBSIZE, then copy its keys into the cluster, overwriting what is there:",
        "`redis-cli -a <password> --cluster import <cluster node> --cluster-from 127.0.0.1:<p> --cluster-copy "
        "--cluster-replace`.",
    ]
    return "\n".join(lines) + "\n"
