"""The budget pace on real servers: a master made slow mid-run (a DEBUG SLEEP loop) makes the governor back off
within seconds, and it ramps again once the master is fast; gates failing at the slowest pace pause the run between
slots, and `runbook resume` finishes it."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from runbook_lib.cluster.topology import observe
from runbook_lib.run.notebook import CHARTS_DIR
from runbook_lib.sections.validate import key_count
from runbook_lib.watch.probe import TrafficProbe
from tests.conftest import port_block, start_sandbox
from tests.integration.faults import RUNBOOK, cli, params_variant

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
BUDGET = {"preset": "budget", "start_slots_per_s": 2.0, "max_slots_per_s": 64.0}


@pytest.fixture
def sandbox(tmp_path):
    sb = start_sandbox(tmp_path / "sandbox", PORT, 3000)
    yield sb
    sb.down()


def paces(run_dir: Path) -> list[dict]:
    path = run_dir / "journal.jsonl"
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "pace"]


def wait_for(what, timeout: float, step: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = what()
        if found:
            return found
        time.sleep(step)
    return None


def sleeper(port: int, password: str, stop: threading.Event) -> threading.Thread:
    """Blocks one master for 60 ms at a time until `stop`: every request routed to it waits."""
    def loop():
        r = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5)
        while not stop.is_set():
            r.execute_command("DEBUG", "SLEEP", "0.06")
            time.sleep(0.03)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


@pytest.mark.exclusive
def test_a_slow_master_makes_the_pace_drop_within_seconds_and_it_rises_again_after(sandbox, tmp_path):
    creds = sandbox.credentials()
    keys = key_count(observe(SEED, creds), creds)
    params = params_variant(sandbox, "budget", gates={"latency_budget_pct": 100.0, "latency_floor_ms": 5.0,
                                                      "baseline_s": 3.0}, **BUDGET)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RUNBOOK_FAILPOINT"}
    run = subprocess.Popen([RUNBOOK, "run", "--params", str(params), "--out", str(run_dir)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()
    try:
        ramped = wait_for(lambda: [p for p in paces(run_dir) if p["action"] == "ramp" and p["slots_per_s"] >= 6.0],
                          timeout=240)
        assert ramped, f"the pace never ramped on a quiet cluster: {paces(run_dir)}"
        level = paces(run_dir)[-1]["slots_per_s"]
        slowed_at = time.time()
        sleeper(PORT, creds.password, stop)
        backed = wait_for(lambda: [p for p in paces(run_dir) if p["ts"] >= slowed_at and p["action"] == "back off"],
                          timeout=15)
        assert backed, f"no back-off within 15 s of a master sleeping 60 ms at a time: {paces(run_dir)[-5:]}"
        assert backed[0]["ts"] - slowed_at < 10.0
        assert backed[0]["slots_per_s"] < level and backed[0]["ratio"] > backed[0]["limit"]
        time.sleep(4)
        stop.set()
        healed_at = time.time()
        again = wait_for(lambda: [p for p in paces(run_dir) if p["ts"] >= healed_at and p["action"] == "ramp"],
                         timeout=40)
        assert again, f"the pace did not rise again once the master was fast: {paces(run_dir)[-5:]}"
        out, _ = run.communicate(timeout=600)
    finally:
        stop.set()
        if run.poll() is None:
            run.kill()
            run.wait()
    assert "40_migrate: pass" in out, out
    assert run.returncode == 0 or "failed: latency variation" in out, "only the slow master's latency may fail it"
    pace_journal = paces(run_dir)
    assert all(e["slots_per_s"] <= BUDGET["max_slots_per_s"] for e in pace_journal), "the ceiling holds"
    assert all({"ratio", "low", "high", "requests", "reason", "failing"} <= set(e) for e in pace_journal)
    assert (run_dir / CHARTS_DIR / "pace.png").exists(), "40_migrate charts the pace"
    TrafficProbe.attach(run_dir, creds).cleanup()
    topo = observe(SEED, creds)
    assert sorted(len(s) for s in topo.slots_by_master().values()) == [4096] * 4
    assert key_count(topo, creds) == keys


def test_gates_failing_at_the_slowest_pace_pause_between_slots_and_resume_finishes(sandbox, tmp_path):
    creds = sandbox.credentials()
    keys = key_count(observe(SEED, creds), creds)
    strict = params_variant(sandbox, "strict", gates={"avg_latency_ms": 0.001, "pause_after_s": 3.0,
                                                      "baseline_s": 1.0}, **BUDGET)
    run_dir = tmp_path / "run"
    paused = cli("run", "--params", str(strict), "--out", str(run_dir))
    assert paused.returncode == 1, paused.stdout + paused.stderr
    assert "40_migrate: fail" in paused.stdout and "slowest pace" in paused.stdout, paused.stdout
    assert "average latency" in paused.stdout and "runbook resume" in paused.stdout
    actions = [p["action"] for p in paces(run_dir)]
    assert "back off" in actions and actions[-1] == "pause"
    assert observe(SEED, creds).open_slots() == [], "a paused run leaves no slot open"

    resumed = cli("resume", "--params", str(sandbox.root / "params.yaml"), "--run-dir", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    TrafficProbe.attach(run_dir, creds).cleanup()
    topo = observe(SEED, creds)
    assert sorted(len(s) for s in topo.slots_by_master().values()) == [4096] * 4
    assert key_count(topo, creds) == keys
