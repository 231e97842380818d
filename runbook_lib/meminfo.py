"""This host's memory as the kernel reports it (/proc/meminfo): what preflight compares a node's maxmemory with and
what the sandbox checks before it loads data."""

from __future__ import annotations

from pathlib import Path


def read(field: str, root: Path = Path("/")) -> int | None:
    """The /proc/meminfo `field` (MemTotal, MemAvailable, ...) in bytes, or None when it cannot be read."""
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                fields = value.split()
                return int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    except (OSError, ValueError, IndexError):
        return None
    return None
