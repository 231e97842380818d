"""Several hosts on one machine: a network namespace per host, joined by veth pairs to a bridge in the root namespace.

Each host has its own address in a private range derived from the sandbox's port (IPv4 10.P.P.0/24 or IPv6
fd72:6e62:PPPP::/64, where PPPP is the port), which exists only inside this machine's namespaces; the runbook and
its probe stay in the root namespace and reach the hosts across the bridge. With a round-trip time, `tc netem`
delays every packet by half of it on the way out of each host and of the bridge, so every pair of hosts, and the
root namespace and any host, are one round trip apart. Host names go into /etc/hosts (between markers naming the
sandbox), where getaddrinfo finds them, as production finds DNS names. Everything made is recorded in the sandbox
folder before it is made, so `remove` takes it all away again, even after a crash. Needs root and iproute2.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from runbook_lib.addresses import forget_resolved
from runbook_lib.exceptions import SandboxError

RECORD_FILE = "network.json"
HOSTS_FILE = Path("/etc/hosts")
DOMAIN = "test"
"""Host names end in .test (RFC 2606: reserved for testing, never resolved on the internet)."""


@dataclass(frozen=True)
class Host:
    """One emulated host: its name, its network namespace and its address."""

    name: str
    namespace: str
    ip: str


def plan(port: int, hosts: int, ipv6: bool = False) -> list[Host]:
    """The hosts of a sandbox whose first port is `port`: names, namespaces and addresses unique to that port."""
    if not 1024 <= port < 65536:
        raise SandboxError(f"port {port} cannot name a multi-host sandbox (1024-65535)")
    tag = f"rb{port}"
    return [Host(name=f"redis-{i + 1}.{tag}.{DOMAIN}", namespace=f"{tag}h{i}", ip=str(_subnet(port, ipv6)[11 + i]))
            for i in range(hosts)]


def _subnet(port: int, ipv6: bool) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if ipv6:
        return ipaddress.IPv6Network(f"fd72:6e62:{port:x}::/64")
    return ipaddress.IPv4Network(f"10.{port >> 8}.{port & 255}.0/24")


def _bridge(port: int) -> str:
    return f"rb{port}br"


def _ip() -> str:
    found = shutil.which("ip") or ("/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else "")
    if not found:
        raise SandboxError("the ip command (iproute2) is not installed; Debian: apt-get install -y iproute2")
    return found


def _tc() -> str:
    found = shutil.which("tc") or ("/usr/sbin/tc" if Path("/usr/sbin/tc").exists() else "")
    if not found:
        raise SandboxError("the tc command (iproute2) is not installed; Debian: apt-get install -y iproute2")
    return found


def _run(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SandboxError(f"`{' '.join(args)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def unavailable() -> str:
    """Why namespaces cannot be made here ("" when they can): not root, no iproute2, or the kernel refuses."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    try:
        ip = _ip()
    except SandboxError as e:
        return str(e)
    probe = f"rbprobe{os.getpid()}"
    proc = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"`ip netns add` failed: {(proc.stderr or proc.stdout).strip()}"
    subprocess.run([ip, "netns", "del", probe], capture_output=True)
    return ""


def netem_unavailable() -> str:
    """Why `tc netem` cannot delay packets here ("" when it can): the kernel needs sch_netem."""
    missing = unavailable()
    if missing:
        return missing
    ip, tc, probe = _ip(), _tc(), f"rbprobe{os.getpid()}"
    try:
        _run(ip, "netns", "add", probe)
        _run(ip, "-n", probe, "link", "set", "lo", "up")
        proc = subprocess.run([tc, "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                              capture_output=True, text=True)
        return "" if proc.returncode == 0 else f"`tc qdisc add ... netem` failed: {(proc.stderr or proc.stdout).strip()}"
    finally:
        subprocess.run([ip, "netns", "del", probe], capture_output=True)


def create(folder: Path, port: int, hosts: list[Host], rtt_ms: float = 0.0) -> None:
    """Make the bridge, one namespace and veth pair per host, the addresses, the delay and the host names; each
    thing is recorded in `folder` before it is made. On any failure, what was made is removed again."""
    ip, ipv6 = _ip(), ":" in hosts[0].ip
    net = _subnet(port, ipv6)
    bridge = _bridge(port)
    record = {"port": port, "bridge": bridge, "hosts": [asdict(h) for h in hosts], "links": [], "namespaces": [],
              "hosts_file": False, "rtt_ms": rtt_ms}
    path = folder / RECORD_FILE

    def note(kind: str, name: str) -> None:
        record[kind].append(name)
        path.write_text(json.dumps(record, indent=2))

    dad = ["nodad"] if ipv6 else []
    clear_stale(port, len(hosts))
    try:
        note("links", bridge)
        _run(ip, "link", "add", bridge, "type", "bridge")
        _run(ip, "addr", "add", f"{net[1]}/{net.prefixlen}", "dev", bridge, *dad)
        _run(ip, "link", "set", bridge, "up")
        for i, host in enumerate(hosts):
            outer, inner = f"rb{port}v{i}", f"rb{port}p{i}"
            note("namespaces", host.namespace)
            _run(ip, "netns", "add", host.namespace)
            note("links", outer)
            _run(ip, "link", "add", outer, "type", "veth", "peer", "name", inner)
            _run(ip, "link", "set", inner, "netns", host.namespace)
            _run(ip, "link", "set", outer, "master", bridge, "up")
            _run(ip, "-n", host.namespace, "link", "set", inner, "name", "eth0")
            _run(ip, "-n", host.namespace, "addr", "add", f"{host.ip}/{net.prefixlen}", "dev", "eth0", *dad)
            _run(ip, "-n", host.namespace, "link", "set", "eth0", "up")
            _run(ip, "-n", host.namespace, "link", "set", "lo", "up")
        if rtt_ms > 0:
            delay = f"{rtt_ms * 500:.0f}us"
            _run(_tc(), "qdisc", "add", "dev", bridge, "root", "netem", "delay", delay)
            for host in hosts:
                _run(_tc(), "-n", host.namespace, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", delay)
        record["hosts_file"] = True
        path.write_text(json.dumps(record, indent=2))
        _edit_hosts_file(_marker(folder), [f"{h.ip} {h.name}" for h in hosts])
    except BaseException:
        remove(folder)
        raise


def remove(folder: Path) -> list[str]:
    """Remove every namespace, link and host name the record in `folder` lists (what is already gone is skipped);
    returns what was removed."""
    path = folder / RECORD_FILE
    if not path.exists():
        return []
    record = json.loads(path.read_text())
    ip, removed = _ip(), []
    if record.get("hosts_file"):
        _edit_hosts_file(_marker(folder), [])
        removed.append(f"{HOSTS_FILE} entries")
    existing = set(subprocess.run([ip, "netns", "list"], capture_output=True, text=True).stdout.split())
    for namespace in record.get("namespaces", []):
        if namespace in existing:
            _run(ip, "netns", "del", namespace)
            removed.append(f"namespace {namespace}")
    for link in reversed(record.get("links", [])):
        if _delete_link(ip, link):
            removed.append(f"link {link}")
    path.unlink()
    return removed


def clear_stale(port: int, hosts: int) -> list[str]:
    """Delete the namespaces and links named after `port` that an earlier sandbox left behind (a killed run, a
    deleted folder), so they cannot collide with a new one; refuses while any process still runs in one of them."""
    ip, tag, removed = _ip(), f"rb{port}", []
    existing = set(subprocess.run([ip, "netns", "list"], capture_output=True, text=True).stdout.split())
    namespaces = [f"{tag}h{i}" for i in range(hosts) if f"{tag}h{i}" in existing]
    for namespace in namespaces:
        pids = subprocess.run([ip, "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        if pids:
            raise SandboxError(f"network namespace {namespace} is in use (processes {', '.join(pids)}): another "
                               f"sandbox on port {port} is running; stop it or choose another port")
    for namespace in namespaces:
        _run(ip, "netns", "del", namespace)
        removed.append(f"namespace {namespace}")
    for link in [*(f"{tag}v{i}" for i in range(hosts)), _bridge(port)]:
        if _delete_link(ip, link):
            removed.append(f"link {link}")
    if _drop_host_names(tag):
        removed.append(f"{HOSTS_FILE} entries")
    return removed


def _delete_link(ip: str, link: str) -> bool:
    """Delete `link` if it exists; a veth may vanish on its own once its peer's namespace is gone."""
    if subprocess.run([ip, "link", "show", link], capture_output=True).returncode != 0:
        return False
    proc = subprocess.run([ip, "link", "del", link], capture_output=True, text=True)
    if proc.returncode != 0 and "Cannot find device" not in proc.stderr:
        raise SandboxError(f"`{ip} link del {link}` failed: {proc.stderr.strip()}")
    return proc.returncode == 0


def exec_prefix(namespace: str) -> list[str]:
    """The command prefix that runs a program inside a host's namespace."""
    return [_ip(), "netns", "exec", namespace]


BLOCK_PREFIX = "# runbook sandbox "


def _marker(folder: Path) -> str:
    return f"{BLOCK_PREFIX}{folder.resolve()}"


def _edit_hosts_file(marker: str, lines: list[str]) -> None:
    """Replace this sandbox's block of /etc/hosts (between its markers) with `lines`, or drop it when empty."""
    _rewrite_hosts_file(lambda block_marker, _: block_marker != marker, marker, lines)


def _drop_host_names(tag: str) -> bool:
    """Drop every sandbox block of /etc/hosts that names a host of `tag` (left by a sandbox whose folder is gone);
    returns whether one was dropped."""
    suffix = f".{tag}.{DOMAIN}"
    return _rewrite_hosts_file(lambda _, body: not any(line.endswith(suffix) for line in body), "", [])


def _rewrite_hosts_file(keep: Callable[[str, list[str]], bool], marker: str, lines: list[str]) -> bool:
    """Rewrite /etc/hosts keeping the sandbox blocks `keep(marker, lines)` accepts, then append `lines` under
    `marker`; in place and under a lock (the file may be a bind mount, which cannot be renamed over). Returns
    whether a block was dropped."""
    with open(HOSTS_FILE, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        kept: list[str] = []
        block: list[str] | None = None
        dropped = False
        for line in f.read().splitlines():
            if block is None and line.startswith(BLOCK_PREFIX) and line.endswith(" begin"):
                block = [line]
            elif block is not None and line == f"{block[0][:-len(' begin')]} end":
                if keep(block[0][:-len(" begin")], block[1:]):
                    kept += [*block, line]
                else:
                    dropped = True
                block = None
            elif block is not None:
                block.append(line)
            else:
                kept.append(line)
        kept += block or []
        if lines:
            kept += [f"{marker} begin", *lines, f"{marker} end"]
        f.seek(0)
        f.truncate()
        f.write("\n".join(kept) + "\n")
    forget_resolved()
    return dropped
