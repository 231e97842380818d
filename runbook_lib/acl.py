"""The least ACL rules an operator user needs, per runbook section, and the lines that create such a user.

Pure data, in the base layer: the sandbox writes these rules into its nodes' configs and the CLI prints them.

Keys: MIGRATE reads and deletes every key of a slot on the source and RESTORE-ASKING writes it on the target, so the
user needs `~*` for those; plain writes (SET, DEL) are granted only on keys under KEY_PREFIX, through a selector.
"""

from __future__ import annotations

import hashlib

KEY_PREFIX = "runbook:"

CONNECT: tuple[str, ...] = ("+ping", "+cluster|nodes", "+cluster|info", "+info", "+client|setname")
"""Every section: PING, the topology (CLUSTER NODES/INFO), INFO, and CLIENT SETNAME (its connections are named
`runbook`, so that CLIENT LIST tells them from the applications'). On Redis >= 7.2 redis-py also sends CLIENT SETINFO
when it connects and ignores a refusal, which ACL LOG then records; add +client|setinfo there to keep the log clean
(7.0 does not know the command, so it cannot be in the rules)."""

_MOVER = ("+cluster|setslot", "+cluster|getkeysinslot", "+cluster|countkeysinslot", "+migrate", "+restore-asking",
          "+select", "+memory|usage", "+eval", "+exists", "+asking", "+dump", "+pttl", "+del", "+client|list",
          "+multi", "+exec")

SECTIONS: dict[str, tuple[str, ...]] = {
    "00_preflight": ("+config|get", "+dbsize", "+cluster|countkeysinslot", "+scan", "+type", "+memory|usage",
                     "+strlen", "+hlen", "+llen", "+scard", "+zcard", "+xlen", "+readonly"),
    "10_backup": ("+bgsave", "+lastsave", "+time", "+dbsize", "+config|get"),
    "20_add_masters": ("+cluster|meet", "+dbsize"),
    "25_add_replicas": ("+cluster|meet", "+cluster|replicate", "+dbsize"),
    "30_plan": ("+cluster|countkeysinslot",),
    "40_migrate": _MOVER,
    "60_validate": ("+dbsize", "+cluster|keyslot", "+cluster|slots", "+command"),
    "70_monitoring": (),
    "90_rollback": _MOVER + ("+cluster|reset", "+cluster|forget"),
    "run lock": ("+cluster|slots", "+command"),
    "traffic probe": ("+cluster|slots", "+command", "+asking"),
}
"""Commands each section sends on any key (or none). MIGRATE sends SELECT and RESTORE-ASKING to the target node
authenticated as the same user (AUTH2), hence those two; MEMORY USAGE guards against big keys, a slot's keys sized in
one EVAL (a script runs only the commands its user may run); after a BUSYKEY the
mover compares both copies with EXISTS and DUMP (ASKING on the importing target) and DELetes an identical source copy;
CLIENT LIST shows which clients already know a new master."""

PREFIXED: dict[str, tuple[str, ...]] = {
    "60_validate": ("+set", "+get", "+del"),
    "run lock": ("+set", "+get", "+del", "+pttl"),
    "traffic probe": ("+set", "+get", "+del"),
}
"""Commands each section sends only on keys under KEY_PREFIX (validation test keys, the run lock, the probe's keys)."""

REPLICATION_RULES: tuple[str, ...] = ("+psync", "+replconf", "+ping")
"""What a replica's `masteruser` needs to sync from its master."""


def _union(groups) -> list[str]:
    seen: dict[str, None] = {}
    for group in groups:
        for rule in group:
            seen.setdefault(rule, None)
    return list(seen)


def operator_rules(sections: list[str] | None = None) -> list[str]:
    """The ACL rules (after the password) for a user that runs the given sections (all by default)."""
    names = list(SECTIONS) if sections is None else sections
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown sections {unknown}; sections are {list(SECTIONS)}")
    commands = _union([CONNECT] + [SECTIONS[n] for n in names])
    prefixed = [c for c in _union(PREFIXED.get(n, ()) for n in names) if c not in commands]
    rules = ["~*", "resetchannels", "-@all", *commands]
    if prefixed:
        rules.append(f"(~{KEY_PREFIX}* " + " ".join(prefixed) + ")")
    return rules


def password_hash(password: str) -> str:
    """The `#<sha256>` form of a password, so config files and ACL LIST never hold it in clear."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def config_line(user: str, password: str, rules: list[str]) -> str:
    """A redis.conf `user` directive: the user, enabled, with its password hashed and the given rules."""
    return " ".join(["user", user, "reset", "on", password_hash(password), *rules])


def setuser_command(user: str = "runbook", sections: list[str] | None = None) -> str:
    """The ACL SETUSER command an administrator runs on every node (the password left as a placeholder)."""
    return " ".join(["ACL SETUSER", user, "reset", "on", ">PASSWORD", *operator_rules(sections)])
