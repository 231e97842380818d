"""The local sandbox cluster for rehearsals and tests, and its throwaway TLS CA."""

from runbook_lib.sandbox.local import (
    VALUES,
    Sandbox,
    SandboxLayout,
    changed_keys,
    load_data,
    redis_binary,
    sample_keys,
)

__all__ = ["VALUES", "Sandbox", "SandboxLayout", "changed_keys", "load_data", "redis_binary", "sample_keys"]
