"""What the runner's own host can tell: whether a node runs here, its RAM and kernel settings, and TCP reachability."""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runbook_lib import meminfo
from runbook_lib.addresses import format_address, parse_address, resolve

LOCAL_NAMES = {"127.0.0.1", "localhost", "::1"}
KERNEL_FILES = {
    "vm.overcommit_memory": "proc/sys/vm/overcommit_memory",
    "transparent_hugepage": "sys/kernel/mm/transparent_hugepage/enabled",
    "vm.swappiness": "proc/sys/vm/swappiness",
}


def is_local(host: str) -> bool:
    """True when host names this machine (loopback, or an address a socket here can bind), so its files are readable."""
    if host in LOCAL_NAMES:
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return False
    for family, _type, _proto, _name, sockaddr in infos:
        ip = sockaddr[0]
        if ipaddress.ip_address(ip.split("%")[0]).is_loopback:
            return True
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((ip, 0))
            return True
        except OSError:
            continue
    return False


def mem_total(root: Path = Path("/")) -> int | None:
    """This host's RAM in bytes (MemTotal of /proc/meminfo), or None when it cannot be read."""
    return meminfo.read("MemTotal", root)


def kernel_settings(root: Path = Path("/")) -> dict[str, str | OSError]:
    """The kernel settings Redis cares about, read from this host's /proc and /sys (an OSError where unreadable)."""
    values: dict[str, str | OSError] = {}
    for name, relative in KERNEL_FILES.items():
        try:
            values[name] = (root / relative).read_text().strip()
        except OSError as e:
            values[name] = e
    return values


def tcp_open(host: str, port: int, timeout: float = 2.0) -> str:
    """Connect to host:port over TCP and close again; "" when it accepted, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except socket.timeout:
        return f"no answer within {timeout:g} s (filtered by a firewall?)"
    except OSError as e:
        return e.strerror or str(e)


def tcp_open_all(targets: list[tuple[str, int]], timeout: float = 2.0) -> dict[tuple[str, int], str]:
    """tcp_open for many (host, port) pairs at once, so closed or filtered ports cost one timeout in total."""
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(targets))) as pool:
        results = pool.map(lambda t: tcp_open(t[0], t[1], timeout), targets)
        return dict(zip(targets, results))


def machines(addresses: list[str]) -> dict[str, list[str]]:
    """Node addresses grouped by the machine they run on (a name and the IP it resolves to are one machine), keyed
    by a label naming the host as written and its IP: "redis-3.example (10.0.0.7)"."""
    groups: dict[str, list[str]] = {}
    spellings: dict[str, set[str]] = {}
    for address in addresses:
        host_name = parse_address(address)[0]
        ips = resolve(host_name)
        key = ips[0] if ips else host_name
        groups.setdefault(key, []).append(address)
        spellings.setdefault(key, set()).add(host_name)
    labels = {}
    for key, names in spellings.items():
        written = sorted(n for n in names if n != key)
        labels[key] = f"{', '.join(written)} ({key})" if written else key
    return {labels[key]: nodes for key, nodes in groups.items()}


def rdb_copy_hint(address: str, rdb_path: str, dest: str) -> str:
    """How to copy a node's RDB from another host by hand, and check it arrived whole."""
    host_name = parse_address(address)[0]
    remote = format_address(host_name, 0).rsplit(":", 1)[0]
    return f"`scp {remote}:{rdb_path} {dest}/` and compare `sha256sum` on both hosts"
