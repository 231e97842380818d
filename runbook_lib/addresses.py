"""Node addresses as production writes them: host names, IPv4 and bracketed IPv6, resolved in one place.

Params name a node the way its operators do (`redis-1.prod.example:7000`, `10.0.0.5:7000`, `[2001:db8::5]:7000`);
CLUSTER NODES names it the way the cluster knows it (`2001:db8::5:7000@17000,redis-1.prod.example`). A node is the
same node when the host written resolves (every address, IPv4 and IPv6) to the IP the cluster knows, or names its
announced hostname, on the same port.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:7000", or unbracketed as CLUSTER NODES prints it) into host and port;
    raise ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{address!r} is not host:port (unbalanced brackets)")
    host = host[1:-1] if host.startswith("[") else host
    if ":" in host and not is_ip(host):
        raise ValueError(f"{address!r} is not host:port (an IPv6 host is written in brackets: [2001:db8::5]:7000)")
    return host, int(port)


def format_address(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets ("[2001:db8::5]:7000")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(host: str) -> bool:
    """True when host is an IPv4 or IPv6 literal (not a name)."""
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


def canonical_ip(host: str) -> str:
    """An IP literal in its one canonical spelling ("2001:db8:0::5" and "2001:db8::5" are one address)."""
    return str(ipaddress.ip_address(host.split("%")[0]))


@lru_cache(maxsize=1024)
def _lookup(host: str) -> tuple[str, ...]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return ()
    return tuple(dict.fromkeys(canonical_ip(info[4][0]) for info in infos))


def resolve(host: str) -> list[str]:
    """Every IP (IPv4 and IPv6) a host name resolves to, through getaddrinfo (so /etc/hosts, DNS, whatever the
    system uses); an IP literal is itself; [] when the name does not resolve. Looked up once per process."""
    if is_ip(host):
        return [canonical_ip(host)]
    return list(_lookup(host.lower().rstrip(".")))


def forget_resolved() -> None:
    """Drop the cached look-ups (after names were registered or removed, as the sandbox does)."""
    _lookup.cache_clear()


def meet_address(address: str, like: str = "") -> tuple[str, int]:
    """The IP and port CLUSTER MEET needs (Redis 7.0 takes no names): an address the host resolves to, of the same
    family (IPv4/IPv6) as the IP `like` (the seed's) where the name has one; ValueError when it does not resolve."""
    host, port = parse_address(address)
    ips = resolve(host)
    if not ips:
        raise ValueError(f"host {host!r} does not resolve (getaddrinfo found no address)")
    if like and is_ip(like):
        family = ipaddress.ip_address(canonical_ip(like)).version
        ips.sort(key=lambda ip: ipaddress.ip_address(ip).version != family)
    return ips[0], port


def same_node(written: str, ip: str, port: int, hostname: str = "") -> bool:
    """Whether an address as written (a name, an IP, bracketed IPv6) names the node the cluster knows as
    ip:port (announced hostname `hostname`)."""
    try:
        host, wport = parse_address(written)
    except ValueError:
        return False
    if wport != port:
        return False
    if hostname and host.lower().rstrip(".") == hostname.lower().rstrip("."):
        return True
    if is_ip(host):
        return is_ip(ip) and canonical_ip(host) == canonical_ip(ip)
    return bool(ip) and is_ip(ip) and canonical_ip(ip) in resolve(host)


def same_address(a: str, b: str) -> bool:
    """Whether two addresses as written (names, IPs, bracketed IPv6) name one node: the same port and a common
    resolved IP."""
    if a == b:
        return True
    try:
        (host_a, port_a), (host_b, port_b) = parse_address(a), parse_address(b)
    except ValueError:
        return False
    return port_a == port_b and bool(set(resolve(host_a)) & set(resolve(host_b)))
