"""What a saga step is. The engine owns order, retries and compensation."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from provisioning.context import StepContext


class Step:
    id: str = ""
    label: str = ""
    # Default budget; a plan may override it per step (Plan.step_budgets).
    attempts: int = 3
    seconds: float = 60.0
    # A best-effort step that fails leaves the tenant as it is.
    best_effort: bool = False
    # Whether the step makes something (resources, rows, emails) that
    # diagnostics and the error card list; validate and wait_ready only check.
    creates: bool = True

    def run(self, ctx: StepContext) -> dict:
        """Do the work idempotently; return what was created (ids, names)."""
        return {}

    def compensate(self, ctx: StepContext) -> None:
        """Undo by deterministic name or label; "already gone" is success."""

    def verify(self, ctx: StepContext, outputs: dict) -> bool:
        """Is what this step made still there? (A retry may then resume after it.)"""
        return True

    def on_success(self, ctx: StepContext, outputs: dict) -> None:
        """Runs inside the transaction that records success (fenced)."""

    def budget(self, plan) -> tuple[int, float]:
        own = (plan.step_budgets or {}).get(self.id, {})
        return int(own.get("attempts", self.attempts)), float(own.get("seconds", self.seconds))
