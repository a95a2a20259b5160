"""Stall detection: a step running well past its expected duration.

A step is "stalled?" once it has been running (or retrying) for longer than
``max(p95 * PROVISIONING_STALL_FACTOR, floor)``, where p95 comes from
``provisioning.expectations`` and the floor is
``PROVISIONING_STALL_FLOOR_SECONDS`` (``PROVISIONING_STALL_WAIT_FLOOR_SECONDS``
for readiness waits). Elapsed time counts from the step's first start in its
run, as the history's durations do.

Three places use it:

- the heartbeat of the worker holding a run (``engine.Heartbeat``) checks
  that run, and the pumps (``engine.pump``) check the runs nobody holds
  (parked, or not yet claimed), each every ``PROVISIONING_HEARTBEAT_SECONDS``
  (the detection interval). Either records ``tenant.provisioning.stalled``
  once per step run through ``ledger.step_stalled``, which sets
  ``StepRun.stalled_at`` only if unset;
- the pages compute the same verdict from ``started_at`` at render time, so a
  step whose worker is itself stuck or dead still shows "stalled?".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from provisioning import ledger
from provisioning.expectations import expectation
from provisioning.models import ProvisioningRun, StepRun

log = logging.getLogger("provisioning.stall")
S = StepRun.Status
WATCHED = (S.RUNNING, S.RETRYING)
WAIT_STEPS = ("wait_ready",)
EVENT = "tenant.provisioning.stalled"

_CANCEL_RESET_RETRY = (
    "Cancel the run, then reset it, then retry; if it stalls again, copy the diagnostics "
    "and escalate"
)
RUNBOOK = {
    "validate": (
        "Validation only reads the database: a stall means the database is slow or locked. "
        f"{_CANCEL_RESET_RETRY} to the database on-call."
    ),
    "allocate_storage": (
        "Creating the schema waits on a database lock. "
        f"{_CANCEL_RESET_RETRY} to the database on-call."
    ),
    "allocate_identity": (
        f"Writing the organization waits on the database. {_CANCEL_RESET_RETRY} "
        "to the database on-call."
    ),
    "allocate_network": (
        "The container engine is slow to create the network (check `docker info`). "
        f"{_CANCEL_RESET_RETRY} to the platform on-call."
    ),
    "seed_schema": (
        "Creating the tenant's tables waits on a database lock. "
        f"{_CANCEL_RESET_RETRY} to the database on-call."
    ),
    "deploy_workloads": (
        "The engine is slow to pull the image or start containers (check `docker ps` and "
        f"disk space). {_CANCEL_RESET_RETRY} to the platform on-call."
    ),
    "wait_ready": (
        "Replicas are not answering /healthz: look at the replica chips and the step's log. "
        f"{_CANCEL_RESET_RETRY} to the platform on-call."
    ),
    "mark_active": (
        f"Switching the route on waits on the database. {_CANCEL_RESET_RETRY} "
        "to the platform on-call."
    ),
    "send_welcome_emails": (
        "The mail server is slow. This step is best effort: the tenant is unaffected. "
        "Let it finish; if it never does, escalate to whoever runs mail."
    ),
}


@dataclass(frozen=True)
class Verdict:
    step_id: str
    elapsed: float
    median: float
    p95: float
    threshold: float
    stalled: bool
    action: str

    def details(self, step_run: StepRun) -> dict:
        return {
            "step": self.step_id,
            "position": step_run.position,
            "attempt": step_run.attempts,
            "elapsed_s": round(self.elapsed, 1),
            "expected_s": round(self.median, 2),
            "expected_p95_s": round(self.p95, 2),
            "threshold_s": round(self.threshold, 1),
            "action": self.action,
        }


def floor_for(step_id: str) -> float:
    if step_id in WAIT_STEPS:
        return float(settings.PROVISIONING_STALL_WAIT_FLOOR_SECONDS)
    return float(settings.PROVISIONING_STALL_FLOOR_SECONDS)


def _limit(step_id: str, p95: float) -> float:
    return max(p95 * float(settings.PROVISIONING_STALL_FACTOR), floor_for(step_id))


def threshold(step_id: str, plan=None) -> float:
    return _limit(step_id, expectation(step_id, plan).p95)


def verdict(step_run: StepRun, plan, now: datetime | None = None) -> Verdict | None:
    """The stall verdict for a step that is running or retrying; None otherwise."""
    if step_run.status not in WATCHED or step_run.started_at is None:
        return None
    now = now or timezone.now()
    expected = expectation(step_run.step_id, plan)
    limit = _limit(step_run.step_id, expected.p95)
    elapsed = max(0.0, (now - step_run.started_at).total_seconds())
    return Verdict(
        step_id=step_run.step_id,
        elapsed=elapsed,
        median=expected.median,
        p95=expected.p95,
        threshold=limit,
        stalled=elapsed > limit,
        action=RUNBOOK.get(step_run.step_id, _CANCEL_RESET_RETRY + "."),
    )


def check_run(run_id: int) -> int:
    """Record each newly stalled step of one run once; how many were recorded."""
    return _check(StepRun.objects.filter(run_id=run_id))


def check_parked() -> int:
    """The same for every live run no worker holds: parked ones above all."""
    return _check(
        StepRun.objects.filter(
            run__status__in=ProvisioningRun.LIVE,
            run__lease_expires_at__isnull=True,
            run__cancel_requested=False,
        )
    )


def _check(steps) -> int:
    """Never raises for a run that finished or was cancelled meanwhile: it is just skipped."""
    steps = list(
        steps.filter(status__in=WATCHED, stalled_at__isnull=True)
        .select_related("run__tenant__plan")
        .order_by("run_id", "position")
    )
    recorded = 0
    for step_run in steps:
        found = verdict(step_run, step_run.run.tenant.plan)
        if found is None or not found.stalled:
            continue
        if ledger.step_stalled(step_run.run_id, step_run.pk, found.details(step_run)):
            recorded += 1
            log.warning(
                "run %s step %s stalled? %.0fs > %.0fs",
                step_run.run_id,
                step_run.step_id,
                found.elapsed,
                found.threshold,
            )
    return recorded
