"""Params files: schema, validation with the file and key named, and secrets resolved from env or a 0600 file."""

from __future__ import annotations

import os
import stat
import zoneinfo
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from runbook_lib.addresses import parse_address
from runbook_lib.exceptions import BadInput, ParamsError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class KeyedProblem(ValueError):
    """A cross-field problem that names the params key to fix (pydantic alone would point at the whole file)."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(problem)


SECRET_KEYS = {"password", "pass", "requirepass", "masterauth", "auth", "secret", "token"}
"""Keys someone might write a password under; params refuse them with a pointer to password_env/password_file."""


class TLS(_Section):
    """TLS client settings; files are paths relative to the params file."""

    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


class ClusterParams(_Section):
    """How to reach the existing cluster; the password never appears here, only where to find it."""

    seed: str
    username: str = ""
    password_env: str = ""
    password_file: str = ""
    tls: TLS = TLS()

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: str) -> str:
        parse_address(v)
        return v

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if v and not (v.replace("_", "a").isalnum() and v.isascii() and not v[0].isdigit()):
            raise ValueError("must be the NAME of an environment variable (letters, digits and _), not a password")
        return v

    @model_validator(mode="after")
    def _one_secret(self) -> "ClusterParams":
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        return self


class NewMaster(_Section):
    """A fresh, empty cluster-mode node to become a master, with its replica (attached before the master gets a slot)."""

    address: str
    replica: str = ""

    @field_validator("address", "replica")
    @classmethod
    def _addr(cls, v: str) -> str:
        if v:
            parse_address(v)
        return v


PRESETS = {
    "budget": {"pace": "budget", "slots_per_batch": 256, "slots_in_flight": 16, "migrates_per_round_trip": 4,
               "keys_per_migrate": 1000, "max_slots_per_s": 64.0, "max_duty_pct": 1.0},
    "fast": {"pace": "fixed"},
    "gentle": {"pace": "fixed", "slots_per_batch": 32, "slots_in_flight": 1, "migrates_per_round_trip": 1,
               "keys_per_migrate": 100, "pause_between_batches_s": 0.0, "max_slots_per_s": 5.0, "max_duty_pct": 1.0},
}
DEFAULT_PRESET = "budget"


CLOCK_TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$"
"""A wall-clock time in params: HH:MM, or HH:MM:SS."""


class Window(_Section):
    """The off-peak window slots move in (the article runs expansions at night, e.g. 02:00-04:00): wall-clock `start`
    and `end` (HH:MM, quoted; `end` before `start` crosses midnight) in the IANA `timezone`. Outside it the mover
    starts no slot; `outside: wait` pauses between slots (none open) until it opens, `outside: stop` stops the run
    for `runbook resume`."""

    start: str = Field(pattern=CLOCK_TIME)
    end: str = Field(pattern=CLOCK_TIME)
    timezone: str = "UTC"
    outside: Literal["wait", "stop"] = "wait"

    @field_validator("start", "end", mode="before")
    @classmethod
    def _quoted(cls, value):
        if isinstance(value, int):
            raise ValueError(f"write the time in quotes, e.g. '02:00' (YAML reads an unquoted 02:00 as the number "
                             f"120; got {value!r})")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as 'Europe/Berlin' or 'UTC')") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self):
        if self.start == self.end:
            raise ValueError("start and end are the same time: the window would be empty (leave `window` out to "
                             "move at any time)")
        return self


class Migration(_Section):
    """How slots move: batch size, keys per MIGRATE, timeouts, pacing; `preset` fills the keys not given.

    `pace: budget` (preset `budget`, the default) lets the governor (watch/pace.py) set slots in flight, keys per
    MIGRATE and the slot rate about once a second from the clients' latency against `gates.latency_budget_pct` and
    the node gates, from `start_slots_per_s` up to the ceilings `max_slots_per_s`, `slots_in_flight` and
    `keys_per_migrate`, down to `min_slots_per_s`. `pace: fixed` (presets `fast`, `gentle`) moves at those settings,
    slowed only by failing gates between batches. Every MIGRATE carries at most what the source sends in
    `max_migrate_ms` at its measured throughput (0: keys only), big values alone.

    A source serves no client while a round of MIGRATEs runs. With `max_duty_pct` (presets `budget` and `gentle`:
    1 %; 0: no spacing) each source rests after a round so that rounds blocking it longer than
    `migrate_headroom_ms` take at most that share of its time: a request meeting one waits longer than the budget
    allows, and p99 tolerates about one request in a hundred doing so. A round within the headroom is not spaced.
    Under the budget pace the governor sets the headroom from the baseline p99 and `gates.latency_budget_pct` unless
    params give one.

    `max_slots_per_s` spreads slot moves evenly in time over all sources (0: as fast as they go): clients meet one
    short disturbance at a time instead of bursts. `allow_master_without_replica` lets slots move to a new master
    whose replica is not in sync (attached by 25_add_replicas before the first slot moves): its keys then live in
    one copy until a replica syncs. Until the applications know a new master (as many application connections on it
    as on the least connected old master, from its CLIENT LIST) its slots move one at a time, each ASK window short:
    stock redis-py fails a request on an ASK to a master it does not know (redis-py#4015); after
    `client_learn_wait_s` (0: no wait) the run goes on at its pace and the journal says the clients were not seen.
    `window` (absent: any time) limits slot moves to an off-peak window. Every `quiet_every_s` of moving (0: never)
    nothing moves for `quiet_s`: the clients' latency in these quiet spells is the control that the verdict and the
    governor compare the moving times with (cluster/quiet.py).
    """

    preset: str = DEFAULT_PRESET
    pace: Literal["budget", "fixed"] = "budget"
    slots_per_batch: int = Field(256, ge=1, le=16384)
    keys_per_migrate: int = Field(1000, ge=1, le=100000)
    slots_in_flight: int = Field(32, ge=1, le=1024)
    migrates_per_round_trip: int = Field(4, ge=1, le=1024)
    migrate_timeout_ms: int = Field(10000, ge=100)
    pause_between_batches_s: float = Field(0.0, ge=0)
    max_slots_per_s: float = Field(0.0, ge=0)
    start_slots_per_s: float = Field(2.0, gt=0)
    min_slots_per_s: float = Field(0.5, gt=0)
    max_migrate_ms: float = Field(20.0, ge=0)
    max_duty_pct: float = Field(0.0, ge=0, le=100)
    migrate_headroom_ms: float = Field(0.0, ge=0)
    warmup_slot: bool = True
    convergence_timeout_s: float = Field(60.0, gt=0)
    allow_master_without_replica: bool = False
    client_learn_wait_s: float = Field(30.0, ge=0)
    quiet_every_s: float = Field(20.0, ge=0)
    quiet_s: float = Field(2.0, ge=0)
    window: Window | None = None

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data):
        if isinstance(data, dict):
            name = data.get("preset", DEFAULT_PRESET)
            if name not in PRESETS:
                raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
            return {**PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _budget_ceiling(self):
        if self.pace == "budget" and not self.max_slots_per_s:
            raise ValueError("pace: budget needs a ceiling: max_slots_per_s > 0")
        if self.pace == "budget" and self.min_slots_per_s > min(self.start_slots_per_s, self.max_slots_per_s):
            raise ValueError("min_slots_per_s must not exceed start_slots_per_s nor max_slots_per_s")
        return self


class Gates(_Section):
    """Health thresholds checked before changes (the article's section 1.5 defaults)."""

    cpu_pct: float = Field(70.0, gt=0, le=100)
    memory_pct: float = Field(80.0, gt=0, le=100)
    avg_latency_ms: float = Field(5.0, gt=0)
    p99_latency_ms: float = Field(20.0, gt=0)
    replication_lag_ms: float = Field(500.0, gt=0)
    latency_budget_pct: float = Field(10.0, gt=0)
    latency_floor_ms: float = Field(0.0, ge=0)
    window_s: float = Field(5.0, gt=0)
    baseline_s: float = Field(30.0, gt=0)
    pause_after_s: float = Field(60.0, gt=0)
    max_downtime_ms: float = Field(250.0, gt=0)


class BigKeys(_Section):
    """Keys above this size are reported by preflight and stop the mover before their slot."""

    threshold_bytes: int = Field(10 * 1024 * 1024, ge=1)
    scan_count: int = Field(1000, ge=10)
    max_ops_per_s: float = Field(50000.0, ge=0)
    top_n: int = Field(20, ge=1, le=1000)
    allow: dict[str, int] = Field(default_factory=dict)
    replica_max_lag_s: float = Field(10.0, gt=0)


class Preflight(_Section):
    """How preflight samples the nodes: CPU is measured from INFO cpu over this many seconds of wall time."""

    cpu_sample_s: float = Field(2.0, gt=0, le=60)


class Backup(_Section):
    """BGSAVE on replicas before the change; `dir` empty means the run folder's backup/.

    Each save may take `timeout_floor_s` plus `timeout_per_gb_s` per GB of the saving node's used_memory, unless
    `timeout_s` sets one timeout for every save. An RDB this host can read is hashed where it lies and copied into
    `dir` only as `copy` says: `always`, `never`, or `auto` (when it is at most `copy_max_bytes`)."""

    enabled: bool = True
    timeout_s: float | None = Field(None, gt=0)
    timeout_floor_s: float = Field(300.0, gt=0)
    timeout_per_gb_s: float = Field(60.0, ge=0)
    copy_mode: Literal["auto", "always", "never"] = Field("auto", alias="copy")
    copy_max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    dir: str = ""


class Probe(_Section):
    """The traffic probe (docs/design.md, Proof of zero downtime): client processes writing and reading keys under
    `prefix` during the run.

    On by default, against production too, at a modest rate: it writes only under `prefix`, each key with a TTL, and
    needs SET/GET/DEL on that prefix only (docs/acl.md). Without it latency, failed requests and downtime are not
    measured, and the run and its verdict say so first. `processes` worker processes use the patched client (AskSafeCluster, which follows an ASK to a node it does not
    know); `stock_processes` is how many extra worker processes use stock redis-py `RedisCluster` exactly as
    applications configure it, whose failures (redis-py#4015 among them) count as failed requests. `rate` is the total
    over all of them.
    """

    enabled: bool = True
    rate: float = Field(100.0, gt=0, le=100000)
    processes: int = Field(2, ge=1, le=32)
    stock_processes: int = Field(1, ge=0, le=32)
    prefix: str = Field("runbook:probe:", pattern=r"^[A-Za-z0-9_.:-]+$")
    ttl_s: int = Field(3600, ge=60)
    read_ratio: float = Field(0.5, ge=0, le=1)


class Validation(_Section):
    """How 60_validate judges the keyspace. On a live cluster key counts change (writers, deletes, expiry), so "no
    key lost" is proven by keys and slots, not counts; `quiet: true` says nothing but the runbook writes during the run,
    and then an unexplained change of the key count fails too."""

    quiet: bool = False


class Report(_Section):
    """Where run folders are written (relative to the params file)."""

    dir: str = "../reports"


class ParamsModel(_Section):
    """The whole params file."""

    cluster: ClusterParams
    new_masters: list[NewMaster] = Field(min_length=1)
    migration: Migration = Migration()
    gates: Gates = Gates()
    bigkeys: BigKeys = BigKeys()
    preflight: Preflight = Preflight()
    backup: Backup = Backup()
    probe: Probe = Probe()
    validation: Validation = Validation()
    report: Report = Report()
    apply: bool = False
    confirm_cluster: str = ""

    @model_validator(mode="after")
    def _distinct(self) -> "ParamsModel":
        seen: set[str] = set()
        for i, node in enumerate(self.new_masters):
            for name, addr in (("address", node.address), ("replica", node.replica)):
                if not addr:
                    continue
                if addr in seen:
                    raise KeyedProblem(f"new_masters.{i}.{name}", f"node {addr} is listed twice in new_masters")
                if addr == self.cluster.seed:
                    raise KeyedProblem(f"new_masters.{i}.{name}", f"{addr} is the seed (cluster.seed), a node of the "
                                                                  "existing cluster; it cannot also be a new node")
                seen.add(addr)
        if self.apply and not self.confirm_cluster:
            raise KeyedProblem("confirm_cluster", "apply: true needs confirm_cluster (the seed address or the "
                                                  "cluster fingerprint)")
        return self


@dataclass(frozen=True)
class Credentials:
    """What a connection needs to authenticate; `repr` never shows the password."""

    username: str = ""
    password: str = field(default="", repr=False)
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class Params:
    """A validated params file, with its location (relative paths resolve against its folder)."""

    path: Path
    model: ParamsModel

    def resolve(self, relative: str) -> Path:
        """A path from the params file, made absolute against the file's folder."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    @property
    def report_dir(self) -> Path:
        return self.resolve(self.model.report.dir)

    def credentials(self) -> Credentials:
        """The password from the environment variable or 0600 file the params name, and the TLS files: read and
        checked at the first call, the same Credentials after it (a failed read is tried again)."""
        return self._credentials

    @cached_property
    def _credentials(self) -> Credentials:
        c = self.model.cluster
        password = ""
        if c.password_env:
            if c.password_env not in os.environ:
                raise ParamsError(str(self.path), "cluster.password_env",
                                  f"environment variable {c.password_env} is not set; export it before running")
            password = os.environ[c.password_env]
        elif c.password_file:
            password = read_secret_file(self.resolve(c.password_file), str(self.path), "cluster.password_file")
        if password:
            _SECRETS.add(password)
        tls = c.tls
        files = {k: str(self.resolve(getattr(tls, k))) if getattr(tls, k) else "" for k in ("ca_file", "cert_file", "key_file")}
        if tls.enabled:
            for name, file in files.items():
                if file and not Path(file).is_file():
                    raise ParamsError(str(self.path), f"cluster.tls.{name}", f"file {file} does not exist")
            if files["key_file"] and Path(files["key_file"]).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ParamsError(str(self.path), "cluster.tls.key_file", f"private key {files['key_file']} is "
                                                                          f"readable by others; run chmod 600 on it")
        return Credentials(username=c.username, password=password, tls=tls.enabled, **files)


_SECRETS: set[str] = set()


def known_secrets() -> list[str]:
    """Every password this process has read, so that messages and artifacts can be scrubbed of them."""
    return sorted(_SECRETS)


def read_secret_file(path: Path, params_path: str, key: str) -> str:
    """Read a one-line secret from a file that only its owner may read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ParamsError(params_path, key, f"secret file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ParamsError(params_path, key, f"secret file {path} is readable by others; run chmod 600 {path}")
    return path.read_text().strip()


def load_params(path: str | os.PathLike) -> Params:
    """Load and validate a params file; every problem is a ParamsError naming the file and key."""
    p = Path(path).expanduser().resolve()
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise BadInput(f"params file {p} does not exist") from None
    except yaml.YAMLError as e:
        raise ParamsError(str(p), "(file)", f"not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(str(p), "(file)", "must be a mapping of sections")
    try:
        model = ParamsModel.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "(file)"
        msg = err["msg"]
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, KeyedProblem):
            key, msg = ".".join(filter(None, (key if key != "(file)" else "", cause.key))), str(cause)
        elif err["type"] == "extra_forbidden" and str(err["loc"][-1]).lower() in SECRET_KEYS:
            msg = ("passwords never go in params (they would be copied into every report); name an environment "
                   "variable (cluster.password_env) or a 0600 file (cluster.password_file) instead")
        elif err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against params/production.example.yaml)"
        elif err["type"] == "missing":
            msg = "missing value"
        elif "input" in err and not isinstance(err["input"], dict) and "password" not in key:
            msg = f"{msg} (got {err['input']!r})"
        more = f" (and {len(e.errors()) - 1} more problems)" if len(e.errors()) > 1 else ""
        raise ParamsError(str(p), key, msg + more) from None
    return Params(path=p, model=model)


def new_master_addresses(params: Params) -> list[str]:
    """Addresses of the new masters, in params order."""
    return [n.address for n in params.model.new_masters]


def replica_pairs(params: Params) -> list[tuple[str, str]]:
    """(replica, master) address pairs from params, for masters that have one."""
    return [(n.replica, n.address) for n in params.model.new_masters if n.replica]


def replicas_pending(params: Params) -> set[str]:
    """New masters that may own slots without a replica: all of them with migration.allow_master_without_replica,
    else none (each new master's replica is attached before its first slot: 25_add_replicas)."""
    return set(new_master_addresses(params)) if params.model.migration.allow_master_without_replica else set()


def new_node_addresses(params: Params) -> list[str]:
    """Every node the expansion adds: new masters and their replicas."""
    return new_master_addresses(params) + [r for r, _ in replica_pairs(params)]
