"""Shared fixtures: real sandbox clusters on loopback ports, started once per module and always stopped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from runbook_lib.sandbox import Sandbox, SandboxLayout

ROOT = Path(__file__).resolve().parents[1]


def start_sandbox(root: Path, port: int, keys: int, **layout) -> Sandbox:
    sb = Sandbox(root)
    sb.up(SandboxLayout(port=port, **layout), keys=keys, progress=False)
    return sb


@pytest.fixture(scope="session")
def redis_cli() -> str:
    found = os.environ.get("RUNBOOK_REDIS_CLI") or shutil.which("redis-cli")
    if not found:
        pytest.fail("redis-cli not found; run `make test`, which installs it")
    return found


@pytest.fixture(scope="session")
def runbook_bin() -> str:
    found = shutil.which("runbook", path=str(Path(os.sys.executable).parent)) or shutil.which("runbook")
    assert found, "the runbook console script is not installed; run `make test`"
    return found
