"""The runner's outcome: a run's exit code from its sections' verdicts (pure, no notebook executed)."""

from __future__ import annotations

from runbook_lib.run.report import SectionResult
from runbook_lib.run.runner import RunResult


def section(status: str, summary: str) -> SectionResult:
    return SectionResult(name="00_preflight", status=status, summary=summary, seconds=1.0, notebook="", html="")


def test_exit_codes_of_a_run():
    assert RunResult(run_dir=None, sections=[section("pass", "ok")]).exit_code == 0
    assert RunResult(run_dir=None, sections=[section("fail", "CheckFailed: 00_preflight: 1 of 9")]).exit_code == 1
    assert RunResult(run_dir=None, sections=[section("fail", "ParamsError: p.yaml: cluster.seed: x")]).exit_code == 2
    assert RunResult(run_dir=None, sections=[section("fail", "BadInput: confirm_cluster")]).exit_code == 2
    assert RunResult(run_dir=None, sections=[section("fail", "KeyError: 'x'")]).exit_code == 1
    assert RunResult(run_dir=None, sections=[section("pass", "ok")], stopped="lock lost").exit_code == 1
