"""What a saga step is. The engine owns order, retries and compensation."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from provisioning.context import StepContext

# Bounds of a plan's budget: past them it is no longer a budget, and a huge
# number of seconds overflows the date arithmetic of deadlines and stall checks.
MAX_ATTEMPTS = 100
MAX_SECONDS = 86400.0
BUDGET_KEYS = ("attempts", "seconds")


class InvalidBudgets(ValueError):
    """Plan.step_budgets is not what ``parse_budgets`` accepts; ``problems`` says why."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_budgets(raw, step_ids: Collection[str]) -> dict[str, dict]:
    """Check Plan.step_budgets and return it as {step id: {"attempts": int, "seconds": float}}.

    The format is ``{"<step id>": {"attempts": N, "seconds": S}}``, either key
    optional. Every problem is reported at once, so an operator fixes them in
    one go. The admin's form and the engine both ask this one function.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidBudgets(
            ['must be a JSON object such as {"wait_ready": {"attempts": 2, "seconds": 45}}']
        )
    problems: list[str] = []
    parsed: dict[str, dict] = {}
    for step_id, budget in raw.items():
        name = repr(step_id[:40]) if isinstance(step_id, str) else repr(step_id)
        if step_id not in step_ids:
            problems.append(f"{name} is not a step (steps: {', '.join(step_ids)})")
            continue
        if not isinstance(budget, dict):
            problems.append(f'{step_id}: must be an object with "attempts" and/or "seconds"')
            continue
        problems.extend(
            f"{step_id}: unknown setting {str(key)[:40]!r} (use attempts, seconds)"
            for key in budget
            if key not in BUDGET_KEYS
        )
        parsed[step_id] = own = {}
        if "attempts" in budget:
            attempts = budget["attempts"]
            # bool is an int to Python, and 2.0 is not a count of attempts.
            if type(attempts) is not int or not 1 <= attempts <= MAX_ATTEMPTS:
                problems.append(
                    f"{step_id}.attempts must be a whole number from 1 to {MAX_ATTEMPTS}"
                )
            else:
                own["attempts"] = attempts
        if "seconds" in budget:
            seconds = budget["seconds"]
            # The range test also refuses NaN and infinity (json reads both).
            if type(seconds) not in (int, float) or not 0 < seconds <= MAX_SECONDS:
                problems.append(
                    f"{step_id}.seconds must be a number above 0 and at most {MAX_SECONDS:g}"
                )
            else:
                own["seconds"] = float(seconds)
    if problems:
        raise InvalidBudgets(problems)
    return parsed


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

    @property
    def has_on_success(self) -> bool:
        """Whether this step has an ``on_success`` of its own (the engine then records
        its success in a transaction of its own, with that code inside)."""
        return type(self).on_success is not Step.on_success

    def budget(self, plan, *, strict: bool = True) -> tuple[int, float]:
        """(attempts, seconds) on ``plan``: its Plan.step_budgets entry, else the defaults.

        Strict (the engine running a step) raises InvalidBudgets for a budget
        saved past the admin's check, e.g. by SQL. Pages, stall checks and
        undo pass ``strict=False`` and get the defaults: showing a tenant or
        removing what it made must not depend on a broken budget.
        """
        from provisioning.steps import STEP_IDS  # the saga's list imports this module

        try:
            own = parse_budgets(plan.step_budgets, STEP_IDS).get(self.id, {})
        except InvalidBudgets as exc:
            if strict:
                raise InvalidBudgets(
                    [f"plan {plan}'s step_budgets: {p}" for p in exc.problems]
                ) from exc
            own = {}
        return own.get("attempts", self.attempts), own.get("seconds", float(self.seconds))
