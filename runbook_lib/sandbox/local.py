"""A real local Redis Cluster for demos and tests: existing masters + replicas with data, new nodes unjoined.

On 127.0.0.1 by default; with `hosts` > 1 the nodes are spread over that many emulated hosts, each a network
namespace with its own address and host name (sandbox/network.py), optionally a round trip apart."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
import yaml
from redis.crc import key_slot
from tqdm.auto import tqdm

import runbook_lib.sandbox.network as network
import runbook_lib.sandbox.sizing as sizing
from runbook_lib import acl as acl_rules
from runbook_lib.addresses import meet_address
from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.topology import SLOTS, cluster_info, read_view
from runbook_lib.config import Credentials
from runbook_lib.exceptions import SandboxError
from runbook_lib.sandbox.certs import make_certificates

STATE_FILE = "sandbox.json"
PASSWORD_FILE = "password"
ADMIN_PASSWORD_FILE = "admin-password"
TLS_DIR = "tls"
OPERATOR_USER = "runbook"
ADMIN_USER = "admin"
REPLICATION_USER = "replicator"


@dataclass
class SandboxLayout:
    """Ports of every role (new nodes follow the existing ones) and the hosts they run on.

    `hosts` 1 is one loopback interface; more spread the nodes over that many network namespaces, node k (in
    `all_ports` order) on host k mod hosts, `rtt_ms` apart (tc netem), on IPv6 addresses with `ipv6`. With
    `announce_hostnames` each node announces its host name (cluster-announce-hostname) and clients are sent there
    (cluster-preferred-endpoint-type hostname).
    """

    port: int = 7000
    masters: int = 3
    replicas: int = 1
    new_masters: int = 1
    hosts: int = 1
    rtt_ms: float = 0.0
    ipv6: bool = False
    announce_hostnames: bool = False

    @property
    def master_ports(self) -> list[int]:
        return list(range(self.port, self.port + self.masters))

    @property
    def replica_ports(self) -> list[int]:
        start = self.port + self.masters
        return list(range(start, start + self.masters * self.replicas))

    @property
    def new_master_ports(self) -> list[int]:
        start = self.port + self.masters * (1 + self.replicas)
        return list(range(start, start + self.new_masters))

    @property
    def new_replica_ports(self) -> list[int]:
        start = self.new_master_ports[-1] + 1 if self.new_masters else self.port
        return list(range(start, start + self.new_masters))

    @property
    def all_ports(self) -> list[int]:
        return self.master_ports + self.replica_ports + self.new_master_ports + self.new_replica_ports

    def host_index(self, port: int) -> int:
        """Which host a node runs on: nodes take the hosts in turn, so a master and its replica stay apart."""
        return self.all_ports.index(port) % self.hosts


def redis_binary(name: str = "redis-server") -> str:
    """Find redis-server (or redis-cli) via RUNBOOK_REDIS_SERVER / RUNBOOK_REDIS_CLI or PATH."""
    env = os.environ.get("RUNBOOK_" + name.upper().replace("-", "_"))
    found = env or shutil.which(name)
    if not found:
        raise SandboxError(f"{name} not found on PATH; install it (Debian: apt-get install -y redis-server) "
                           f"or set RUNBOOK_{name.upper().replace('-', '_')} to its path")
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _node_config(port: int, node_dir: Path, security: list[str], persistence: bool, tls: bool = False,
                 bind: str = "127.0.0.1", hostname: str = "", maxmemory: int = sizing.MIN_MAXMEMORY) -> str:
    """redis.conf for one node; with TLS it listens only on a TLS port (the cluster bus and replication too); with a
    hostname it announces it and sends clients there."""
    lines = [
        *(["port 0", f"tls-port {port}"] if tls else [f"port {port}"]),
        f"bind {bind}", f"dir {node_dir}", "daemonize yes",
        f"pidfile {node_dir / 'redis.pid'}", f"logfile {node_dir / 'redis.log'}",
        "cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 5000",
        f"maxmemory {maxmemory}", "maxmemory-policy noeviction", "enable-debug-command local",
        *security,
    ]
    if hostname:
        lines += [f"cluster-announce-hostname {hostname}", "cluster-preferred-endpoint-type hostname"]
    lines += ["appendonly yes", "save 3600 1"] if persistence else ["appendonly no", 'save ""']
    return "\n".join(lines) + "\n"


class Sandbox:
    """A sandbox rooted at one folder: its state file, password file and one sub-folder per node."""

    def __init__(self, root: str | os.PathLike = ".sandbox") -> None:
        self.root = Path(root).resolve()

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    @property
    def password_path(self) -> Path:
        return self.root / PASSWORD_FILE

    @property
    def admin_password_path(self) -> Path:
        return self.root / ADMIN_PASSWORD_FILE

    def _tls_files(self) -> dict:
        state = self.state() or {}
        if not state.get("tls"):
            return {}
        folder = self.root / TLS_DIR
        return {"tls": True, "ca_file": str(folder / "ca.crt"), "cert_file": str(folder / "client.crt"),
                "key_file": str(folder / "client.key")}

    def credentials(self) -> Credentials:
        """What the runbook connects with: the `runbook` ACL user with --acl, else the default user's password."""
        username = OPERATOR_USER if (self.state() or {}).get("acl") else ""
        return Credentials(username=username, password=self.password_path.read_text().strip(), **self._tls_files())

    def admin_credentials(self) -> Credentials:
        """What the sandbox itself sets up with (slots, data): the `admin` user with --acl, else the default user."""
        if not (self.state() or {}).get("acl"):
            return self.credentials()
        return Credentials(username=ADMIN_USER, password=self.admin_password_path.read_text().strip(),
                           **self._tls_files())

    def state(self) -> dict | None:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else None

    def address(self, port: int) -> str:
        """How params and the runbook name the node on `port`: 127.0.0.1:port, or its host's name and the port."""
        hosts = (self.state() or {}).get("hosts") or []
        if not hosts:
            return f"127.0.0.1:{port}"
        layout = SandboxLayout(**self.state()["layout"])
        return f"{hosts[layout.host_index(port)]['name']}:{port}"

    def hosts(self) -> list[network.Host]:
        """The emulated hosts (empty for the loopback sandbox)."""
        return [network.Host(**h) for h in (self.state() or {}).get("hosts") or []]

    def running_pids(self) -> dict[int, int]:
        """Port → pid of this sandbox's redis-server processes that are still alive."""
        alive = {}
        for port in (self.state() or {}).get("ports", []):
            pid = _read_pid(self.root / str(port) / "redis.pid")
            if pid and _is_our_redis(pid, port):
                alive[port] = pid
        return alive

    def up(self, layout: SandboxLayout, keys: int = 200_000, persistence: bool = False, progress: bool = True,
           acl: bool = False, tls: bool = False, values: str = "mixed") -> dict:
        """Start the existing cluster with data and the new nodes unjoined; write params for it.

        `acl`: the default user is off, the runbook connects as a least-privilege `runbook` user and replicas sync as
        `replicator`; the sandbox sets itself up as `admin`. `tls`: a throwaway CA, and every connection over TLS.
        `values`: the data's profile (`sample_keys`); each node's maxmemory is sized from it and the keys.
        """
        if self.running_pids():
            raise SandboxError(f"a sandbox is already up in {self.root}; run `runbook sandbox down --dir {self.root}` first")
        if layout.hosts < 1 or layout.rtt_ms < 0:
            raise SandboxError("--hosts must be at least 1 and --rtt-ms at least 0")
        if layout.hosts == 1 and (layout.rtt_ms or layout.ipv6 or layout.announce_hostnames):
            raise SandboxError("--rtt-ms, --ipv6 and --announce-hostnames need several hosts (--hosts 2 or more); "
                               "--hosts 1 is the loopback sandbox")
        taken = [p for p in layout.all_ports if not _port_free(p) or not _port_free(p + 10000)] if layout.hosts == 1 else []
        if taken:
            raise SandboxError(f"ports {taken} (or their cluster bus ports +10000) are in use on 127.0.0.1; "
                               "stop what holds them or choose another --port")
        if layout.hosts > 1 and (missing := network.unavailable()):
            raise SandboxError(f"--hosts {layout.hosts} needs network namespaces: {missing}")
        if layout.rtt_ms and (missing := network.netem_unavailable()):
            raise SandboxError(f"--rtt-ms needs tc netem (the kernel's sch_netem), which this machine lacks: {missing}")
        if values not in VALUES:
            raise SandboxError(f"--values must be one of {', '.join(VALUES)}, not {values!r}")
        fp = sizing.footprint(keys, values, layout.masters, layout.replicas)
        sizing.check_host(fp)
        server = redis_binary()
        if self.root.exists():
            network.remove(self.root)
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        password = _secret_file(self.password_path)
        hosts = network.plan(layout.port, layout.hosts, layout.ipv6) if layout.hosts > 1 else []
        state = {"layout": asdict(layout), "ports": layout.all_ports, "started": time.time(), "acl": acl, "tls": tls,
                 "hosts": [asdict(h) for h in hosts], "keys": keys, "values": values, "maxmemory": fp.maxmemory}
        self.state_path.write_text(json.dumps(state, indent=2))
        if hosts:
            network.create(self.root, layout.port, hosts, layout.rtt_ms)
        security = (self._acl_config(password) if acl else [f'requirepass "{password}"', f'masterauth "{password}"'])
        if tls:
            files = make_certificates(self.root / TLS_DIR, names=[h.name for h in hosts] or None)
            security += [f"tls-cert-file {files.node_cert}", f"tls-key-file {files.node_key}",
                         f"tls-ca-cert-file {files.ca_cert}", "tls-cluster yes", "tls-replication yes",
                         "tls-auth-clients yes"]
        for port in layout.all_ports:
            node_dir = self.root / str(port)
            node_dir.mkdir()
            conf = node_dir / "redis.conf"
            conf.touch(mode=0o600)
            host = hosts[layout.host_index(port)] if hosts else None
            conf.write_text(_node_config(port, node_dir, security, persistence, tls, bind=host.ip if host else "127.0.0.1",
                                         hostname=host.name if host and layout.announce_hostnames else "",
                                         maxmemory=fp.maxmemory))
            prefix = network.exec_prefix(host.namespace) if host else []
            proc = subprocess.run([*prefix, server, str(conf)], capture_output=True, text=True)
            if proc.returncode != 0:
                self.down()
                raise SandboxError(f"redis-server on port {port} failed to start: {proc.stderr or proc.stdout}")
        creds = self.admin_credentials()
        try:
            self._wait_ready(layout.all_ports, creds)
            self._create_cluster(layout, creds)
            if keys:
                load_data(self.address(layout.port), creds, keys, progress=progress, values=values)
        except BaseException:
            self.down()
            raise
        self.write_params(layout)
        return state

    def _acl_config(self, password: str) -> list[str]:
        """redis.conf lines: default user off, `admin` for the sandbox, `runbook` with the least rules, `replicator`."""
        admin = _secret_file(self.admin_password_path)
        replication = secrets.token_urlsafe(24)
        return ["user default off",
                acl_rules.config_line(ADMIN_USER, admin, ["~*", "&*", "+@all"]),
                acl_rules.config_line(OPERATOR_USER, password, acl_rules.operator_rules()),
                acl_rules.config_line(REPLICATION_USER, replication, list(acl_rules.REPLICATION_RULES)),
                f"masteruser {REPLICATION_USER}", f'masterauth "{replication}"']

    def down(self) -> list[int]:
        """Stop exactly this sandbox's processes (pids from its own pidfiles), remove the namespaces, links and host
        names it made, and return the ports stopped."""
        alive = self.running_pids()
        for pid in alive.values():
            os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 10
        while time.time() < deadline and any(_is_our_redis(pid, port) for port, pid in alive.items()):
            time.sleep(0.05)
        for port, pid in alive.items():
            if _is_our_redis(pid, port):
                os.kill(pid, signal.SIGKILL)
        network.remove(self.root)
        return sorted(alive)

    def _wait_ready(self, ports: list[int], creds: Credentials, timeout: float = 10.0) -> None:
        deadline = time.time() + timeout
        for port in ports:
            while True:
                try:
                    node_client(self.address(port), creds, timeout=1.0).ping()
                    break
                except (redis.RedisError, OSError):
                    if time.time() > deadline:
                        raise SandboxError(f"redis-server on port {port} did not answer; see "
                                           f"{self.root / str(port) / 'redis.log'}") from None
                    time.sleep(0.05)

    def _create_cluster(self, layout: SandboxLayout, creds: Credentials) -> None:
        """Assign even slot ranges, meet every node, attach replicas, wait for cluster_state:ok everywhere."""
        masters = [node_client(self.address(p), creds) for p in layout.master_ports]
        share = SLOTS // layout.masters
        for i, m in enumerate(masters):
            lo = i * share
            hi = SLOTS - 1 if i == layout.masters - 1 else (i + 1) * share - 1
            m.execute_command("CLUSTER ADDSLOTSRANGE", lo, hi)
            m.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
        members = layout.master_ports + layout.replica_ports
        for port in members[1:]:
            masters[0].execute_command("CLUSTER MEET", *meet_address(self.address(port)))
        _wait(lambda: all(len(read_view(node_client(self.address(p), creds), str(p)).entries) == len(members)
                          for p in members), 20, "the sandbox nodes to meet")
        ids = [read_view(m, "").myself.id for m in masters]
        for k, port in enumerate(layout.replica_ports):
            node_client(self.address(port), creds).execute_command("CLUSTER REPLICATE", ids[k % layout.masters])
        _wait(lambda: all(_cluster_state(self.address(p), creds) == "ok" for p in members)
              and all(_info(self.address(p), creds, "replication").get("master_link_status") == "up"
                      for p in layout.replica_ports),
              30, "the sandbox cluster to reach cluster_state:ok with replicas in sync")

    def write_params(self, layout: SandboxLayout) -> Path:
        """Write params.yaml for this sandbox into its folder (same schema as params/sandbox.yaml)."""
        state = self.state() or {}
        cluster: dict = {"seed": self.address(layout.port)}
        if state.get("acl"):
            cluster["username"] = OPERATOR_USER
        cluster["password_file"] = PASSWORD_FILE
        if state.get("tls"):
            cluster["tls"] = {"enabled": True, "ca_file": f"{TLS_DIR}/ca.crt", "cert_file": f"{TLS_DIR}/client.crt",
                              "key_file": f"{TLS_DIR}/client.key"}
        params = {
            "cluster": cluster,
            "new_masters": [{"address": self.address(m), "replica": self.address(r)}
                            for m, r in zip(layout.new_master_ports, layout.new_replica_ports)],
            "migration": {"preset": "budget"},
            "probe": {"enabled": True},
            "gates": {"baseline_s": 10.0, "latency_budget_pct": 10.0},
            "validation": {"quiet": True},
            "report": {"dir": str(self.root.parent / "reports")},
            "apply": True,
            "confirm_cluster": self.address(layout.port),
        }
        path = self.root / "params.yaml"
        path.write_text("# Written by `runbook sandbox up`; the password stays in ./password (mode 0600).\n"
                        + yaml.safe_dump(params, sort_keys=False))
        return path


def _secret_file(path: Path) -> str:
    """A fresh random password in an owner-only file; returns it."""
    path.touch(mode=0o600)
    path.write_text(secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def _cluster_state(address: str, creds: Credentials) -> str | None:
    try:
        return cluster_info(node_client(address, creds, timeout=2.0)).get("cluster_state")
    except (redis.RedisError, OSError):
        return None


def _info(address: str, creds: Credentials, section: str) -> dict:
    try:
        return node_client(address, creds, timeout=2.0).info(section)
    except (redis.RedisError, OSError):
        return {}


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise SandboxError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_our_redis(pid: int, port: int) -> bool:
    """True when pid is alive and is a redis-server listening on this port (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return "redis-server" in cmdline and f":{port}" in cmdline


VALUES = ("mixed", "small")


def sample_keys(count: int, seed: int = 7, values: str = "mixed"):
    """Deterministic data set: (key, type, value) of strings, hashes, lists, sets, zsets and hash tags. `mixed` has
    strings up to 4 KiB and collections up to 30 members; `small` (many keys in little memory) strings up to 64 bytes
    and collections up to 5."""
    if values not in VALUES:
        raise SandboxError(f"values must be one of {', '.join(VALUES)}, not {values!r}")
    small = values == "small"
    sizes = (8, 16, 32, 48, 64) if small else (16, 64, 256, 1024, 4096)
    most = 5 if small else 30
    rng = random.Random(seed)
    for i in range(count):
        r = rng.random()
        if r < 0.05:
            yield f"{{user:{i % 500}}}:session:{i}", "string", "s" * rng.randint(8, 64)
        elif r < 0.65:
            yield f"str:{i}", "string", "v" * rng.choice(sizes)
        elif r < 0.77:
            yield f"hash:{i}", "hash", {f"f{j}": str(j * i) for j in range(rng.randint(2, min(most, 20)))}
        elif r < 0.86:
            yield f"list:{i}", "list", [str(j) for j in range(rng.randint(2, most))]
        elif r < 0.94:
            yield f"set:{i}", "set", [str(j) for j in range(rng.randint(2, most))]
        else:
            yield f"zset:{i}", "zset", {f"m{j}": float(j) for j in range(rng.randint(2, most))}


def load_data(seed: str, creds: Credentials, count: int, progress: bool = True, chunk: int = 2000,
              values: str = "mixed") -> int:
    """Load `count` sample keys, pipelined straight to each slot's owner; returns the keys written. A master that
    reaches its maxmemory stops the load with a SandboxError that says how far it got."""
    view = read_view(node_client(seed, creds), seed)
    owners = view.owners()
    address = {e.id: e.address for e in view.entries.values()}
    pipes = {i: node_client(a, creds).pipeline(transaction=False) for i, a in address.items()}
    bar = tqdm(total=count, unit="key", desc="loading sandbox data", disable=not progress)
    pending = written = 0
    for key, kind, value in sample_keys(count, values=values):
        pipe = pipes[owners[key_slot(key.encode())]]
        if kind == "string":
            pipe.set(key, value)
        elif kind == "hash":
            pipe.hset(key, mapping=value)
        elif kind == "list":
            pipe.rpush(key, *value)
        elif kind == "set":
            pipe.sadd(key, *value)
        else:
            pipe.zadd(key, value)
        pending += 1
        if pending == chunk:
            _flush(pipes, address, written)
            written += pending
            bar.update(pending)
            pending = 0
    _flush(pipes, address, written)
    bar.update(pending)
    bar.close()
    return count


def _flush(pipes: dict, address: dict, written: int) -> None:
    """Send each master's pipelined writes; out of memory is the sandbox's sizing error, not a traceback."""
    for node, pipe in pipes.items():
        try:
            pipe.execute()
        except redis.exceptions.OutOfMemoryError as e:
            raise SandboxError(f"the master {address[node]} reached its maxmemory after about {written:,} keys ({e}); "
                               "the sandbox sizes maxmemory from the keys and their values, so this host's memory or "
                               "that estimate is short: load fewer keys or use --values small") from e


def changed_keys(seed: str, creds: Credentials, count: int, limit: int = 10, values: str = "mixed") -> list[str]:
    """The sample keys (as `load_data` wrote `count` of them) whose value now differs or is missing, read through a
    cluster client: a value-level check that an expansion left the data unchanged. At most `limit` are named."""
    client = cluster_client([seed], creds)
    changed: list[str] = []
    try:
        for key, kind, value in sample_keys(count, values=values):
            if kind == "string":
                same = client.get(key) == value
            elif kind == "hash":
                same = client.hgetall(key) == value
            elif kind == "list":
                same = client.lrange(key, 0, -1) == value
            elif kind == "set":
                same = client.smembers(key) == set(value)
            else:
                same = dict(client.zrange(key, 0, -1, withscores=True)) == value
            if not same:
                changed.append(key)
                if len(changed) >= limit:
                    break
    finally:
        client.close()
    return changed
