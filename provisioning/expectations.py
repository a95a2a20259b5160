"""How long a step is expected to take, for the console's progress bar.

The bar interpolates inside a running step from its start time and this
expectation, so a long step visibly moves instead of sitting still. The
numbers are defaults measured on the local process driver and a local Docker
Engine; a later change can feed them from the history of finished steps
without touching the callers.
"""

from __future__ import annotations

from provisioning.steps import BY_ID

# Seconds for a one-replica plan; per-replica work is added below.
BASE_SECONDS = {
    "validate": 0.3,
    "allocate_storage": 0.5,
    "allocate_identity": 0.5,
    "allocate_network": 1.0,
    "seed_schema": 0.8,
    "deploy_workloads": 2.0,
    "wait_ready": 1.5,
    "mark_active": 0.5,
    "send_welcome_emails": 1.0,
}
PER_REPLICA_SECONDS = {"deploy_workloads": 1.5, "wait_ready": 1.0}
DEFAULT_SECONDS = 2.0
MIN_SECONDS = 0.2


def expected_seconds(step_id: str, plan=None) -> float:
    """Typical duration of ``step_id`` on ``plan``: never above the step's budget."""
    seconds = BASE_SECONDS.get(step_id, DEFAULT_SECONDS)
    replicas = max(1, int(getattr(plan, "replicas", 1) or 1))
    seconds += PER_REPLICA_SECONDS.get(step_id, 0.0) * (replicas - 1)
    step = BY_ID.get(step_id)
    if step is not None and plan is not None:
        _, budget = step.budget(plan)
        seconds = min(seconds, budget)
    return max(MIN_SECONDS, float(seconds))
