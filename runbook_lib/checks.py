"""The result types every layer reports with: a Check (one verdict) and a StepReport (what a step did)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Check:
    """One verdict: status is "pass", "warn" or "fail", with the reason in plain words."""

    name: str
    status: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != "fail"


@dataclass
class StepReport:
    """What a reconciling step found and did; `actions` is empty when there was nothing to do."""

    actions: list[str]
    notes: list[str]

    @property
    def nothing_to_do(self) -> bool:
        return not self.actions
