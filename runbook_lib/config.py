"""Params files: schema, validation with the file and key named, and secrets resolved from env or a 0600 file."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .exceptions import BadInput, ParamsError


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:7000") into host and port; raise ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


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

    @model_validator(mode="after")
    def _one_secret(self) -> "ClusterParams":
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        return self


class NewMaster(_Section):
    """A fresh, empty cluster-mode node to become a master, with the replica that will follow it."""

    address: str
    replica: str = ""

    @field_validator("address", "replica")
    @classmethod
    def _addr(cls, v: str) -> str:
        if v:
            parse_address(v)
        return v


class Migration(_Section):
    """How slots move: batch size, keys per MIGRATE, timeouts, pacing."""

    slots_per_batch: int = Field(256, ge=1, le=16384)
    keys_per_migrate: int = Field(1000, ge=1, le=100000)
    migrate_timeout_ms: int = Field(10000, ge=100)
    pause_between_batches_s: float = Field(0.0, ge=0)
    warmup_slot: bool = True
    convergence_timeout_s: float = Field(60.0, gt=0)


class Gates(_Section):
    """Health thresholds checked before changes (the article's section 1.5 defaults)."""

    cpu_pct: float = Field(70.0, gt=0, le=100)
    memory_pct: float = Field(80.0, gt=0, le=100)
    avg_latency_ms: float = Field(5.0, gt=0)
    p99_latency_ms: float = Field(20.0, gt=0)
    replication_lag_ms: float = Field(500.0, gt=0)
    latency_budget_pct: float = Field(10.0, gt=0)


class BigKeys(_Section):
    """Keys above this size are reported by preflight and stop the mover before their slot."""

    threshold_bytes: int = Field(10 * 1024 * 1024, ge=1)
    scan_count: int = Field(1000, ge=10)


class Backup(_Section):
    """BGSAVE on replicas before the change; `dir` empty means the run folder's backup/."""

    enabled: bool = True
    timeout_s: float = Field(300.0, gt=0)
    dir: str = ""


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
    backup: Backup = Backup()
    report: Report = Report()
    apply: bool = False
    confirm_cluster: str = ""

    @model_validator(mode="after")
    def _distinct(self) -> "ParamsModel":
        seen: set[str] = set()
        for node in self.new_masters:
            for addr in filter(None, (node.address, node.replica)):
                if addr in seen:
                    raise ValueError(f"node {addr} is listed twice in new_masters")
                seen.add(addr)
        if self.cluster.seed in seen:
            raise ValueError(f"the seed {self.cluster.seed} cannot also be a new node")
        if self.apply and not self.confirm_cluster:
            raise ValueError("apply: true needs confirm_cluster (the seed address or the cluster fingerprint)")
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
        """Read the password from the environment variable or 0600 file the params name."""
        c = self.model.cluster
        password = ""
        if c.password_env:
            if c.password_env not in os.environ:
                raise ParamsError(str(self.path), "cluster.password_env",
                                  f"environment variable {c.password_env} is not set; export it before running")
            password = os.environ[c.password_env]
        elif c.password_file:
            password = read_secret_file(self.resolve(c.password_file), str(self.path), "cluster.password_file")
        tls = c.tls
        files = {k: str(self.resolve(getattr(tls, k))) if getattr(tls, k) else "" for k in ("ca_file", "cert_file", "key_file")}
        return Credentials(username=c.username, password=password, tls=tls.enabled, **files)


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
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against params/production.example.yaml)"
        elif err["type"] == "missing":
            msg = "missing value"
        elif "input" in err and not isinstance(err["input"], dict):
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


