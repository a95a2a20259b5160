"""The saga's steps with nothing behind them, for bench/engine.py only.

Selected with ``PROVISIONING_STEP_SET=noop``, which the settings refuse unless
the process says it is a benchmark (``BENCHMARK=1``, and only with
``DEBUG=1``): a console that ran these would mark tenants active that have no
schema, no network and no workload.

Each no-op step keeps the real step's id, label, budget and flags, so "Step
N/M", the ledger's checks of the recorded step at a position and the plans'
step budgets all stay right; what is measured is the engine alone. Two
exceptions, both on purpose:

- ``mark_active`` keeps the real step's ``on_success`` (the tenant becomes
  active inside the transaction that records the step), because that write is
  part of the saga's bookkeeping, not a side effect on the outside world;
- ``wait_ready`` waits when the run asks it to (see ``wait_spec``), so a
  benchmark can hold sagas in a long wait ("K parked sagas").
"""

from __future__ import annotations

from provisioning.steps.base import Step

# The run's fault list carries the wait (it is per run and already stored on
# the run); "wait" is not a fault kind, so provisioning.faults ignores it.
WAIT_KIND = "wait"


def wait_spec(seconds: float) -> dict:
    """What bench/engine.py passes in ``create_tenant(faults=[...])`` to make wait_ready wait."""
    return {"step": "wait_ready", "kind": WAIT_KIND, "n": seconds, "used": 0}


def wait(ctx, seconds: float) -> None:
    """The one place the no-op saga waits: parked, like the hang fault, holding no worker.

    Each check of the step calls this; the first starts the wait (a requested
    wait is not a step overrunning its budget), later ones see whether it is over.
    """
    if "wait_until" not in ctx.memo:
        ctx.extend_deadline(seconds)
        ctx.memo["wait_until"] = ctx.elapsed() + seconds
    left = ctx.memo["wait_until"] - ctx.elapsed()
    if left > 0:
        raise ctx.check_again(
            left, message=f"benchmark wait of {seconds:g}s", reason="benchmark wait"
        )


class NoopStep(Step):
    """The real step's id, label and budget; its run and compensate do nothing."""

    def __init__(self, real: Step):
        self.real = real
        self.id, self.label = real.id, real.label
        self.attempts, self.seconds = real.attempts, real.seconds
        self.best_effort, self.creates = real.best_effort, real.creates

    def run(self, ctx) -> dict:
        return {}

    def compensate(self, ctx) -> None:
        return None

    def verify(self, ctx, outputs: dict) -> bool:
        return True


class NoopMarkActive(NoopStep):
    def on_success(self, ctx, outputs: dict) -> None:
        self.real.on_success(ctx, outputs)


class NoopWaitReady(NoopStep):
    def run(self, ctx) -> dict:
        seconds = sum(
            float(spec["n"])
            for spec in ctx.run.faults or []
            if spec.get("step") == self.id and spec.get("kind") == WAIT_KIND
        )
        if seconds > 0:
            wait(ctx, seconds)
        return {"waited_s": seconds}


SPECIAL = {"mark_active": NoopMarkActive, "wait_ready": NoopWaitReady}


def noop_steps(real_steps: list[Step]) -> list[Step]:
    """The no-op twin of ``real_steps``, in the same order."""
    return [SPECIAL.get(step.id, NoopStep)(step) for step in real_steps]
