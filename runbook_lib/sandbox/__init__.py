"""The local sandbox cluster for rehearsals and tests, and its throwaway TLS CA."""

from runbook_lib.sandbox.local import (
    Sandbox,
    SandboxLayout,
    changed_keys,
    load_data,
    redis_binary,
    sample_keys,
)

__all__ = ["Sandbox", "SandboxLayout", "changed_keys", "load_data", "redis_binary", "sample_keys"]
