"""The status JSON of the contract (`tenant_status --json`, `/api/tenants/<slug>`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from provisioning.models import ProvisioningRun, StepRun, WorkloadHealth, latest_run
from provisioning.steps import STEPS
from tenants.models import Tenant

Status = StepRun.Status
# The statuses of the step a run is busy with, in the order current_step looks.
ACTIVE_STEP = (Status.RUNNING, Status.RETRYING, Status.COMPENSATING)


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def current_step(run: ProvisioningRun | None, steps: list[StepRun]) -> StepRun | None:
    """The step a live run is on: the one running, else the next to run."""
    if run is None or not run.is_live:
        return None
    for wanted in ACTIVE_STEP:
        for step in steps:
            if step.status == wanted:
                return step
    if run.kind == ProvisioningRun.Kind.DECOMMISSION:
        # Decommission undoes in reverse: the next is the last not yet undone.
        return next((s for s in reversed(steps) if s.status != Status.COMPENSATED), None)
    return next((s for s in steps if s.status == Status.PENDING), None)


def stopped_step(run: ProvisioningRun | None, steps: list[StepRun]) -> StepRun | None:
    """Where a finished provisioning run stopped: its failed step, or where a cancel caught it.

    A cancel records no failed step; the last step that had started is where
    the run was when it stopped.
    """
    if run is None or run.is_live or run.kind != ProvisioningRun.Kind.PROVISION:
        return None
    if run.status != ProvisioningRun.Status.FAILED:
        return None
    if run.failed_step:
        return next((s for s in steps if s.step_id == run.failed_step), None)
    started = [s for s in steps if s.started_at is not None and s.status != Status.SKIPPED]
    return started[-1] if started else None


# A parked run is "due" for this long before its wait reads "waiting for a
# worker": a waiting pump claims a due run within milliseconds.
DUE_GRACE = timedelta(seconds=1)


def run_wait(run: ProvisioningRun | None, now: datetime | None = None) -> dict | None:
    """What a live run that no worker holds is waiting for; None while a worker advances it.

    ``{"for": "check", "reason", "next_check_at"}``: parked by a step's wait
    or a retry's backoff, it goes on by itself at ``next_check_at``;
    ``{"for": "worker", "reason"}``: it is due (or new) and waits for a worker
    to claim it, which only takes long when no worker is free or running.
    """
    if run is None or not run.is_live or run.lease_owner:
        return None
    now = now or timezone.now()
    if run.wake_at is not None and run.wake_at > now - DUE_GRACE and not run.cancel_requested:
        return {"for": "check", "reason": run.wait_reason, "next_check_at": iso(run.wake_at)}
    return {"for": "worker", "reason": "waiting for a worker"}


def step_json(step: StepRun) -> dict:
    return {
        "id": step.step_id,
        "label": STEPS[step.position - 1].label,
        "position": step.position,
        "status": step.status,
        "attempts": step.attempts,
        "started_at": iso(step.started_at),
        "finished_at": iso(step.finished_at),
        "duration_s": step.duration_s,
        "error": step.error or None,
        "progress": step.progress or {},
    }


def workloads_json(tenant: Tenant) -> dict:
    """The tenant's driver and what the repair loop last saw of its replicas."""
    health = WorkloadHealth.objects.filter(tenant=tenant).first()
    data = {"driver": tenant.workload_driver or None, "checked_at": None}
    if health is None:
        return data
    return {
        **data,
        "checked_at": iso(health.checked_at),
        "expected": health.expected,
        "healthy": health.healthy,
        "degraded": health.degraded,
        "degraded_since": iso(health.degraded_since),
        "error": health.error or None,
        "replicas": [
            {k: r.get(k) for k in ("name", "state", "healthy", "failures", "answer")}
            # A swarm tenant's replicas also name the node that runs each one.
            | ({"node": r["node"]} if r.get("node") else {})
            for r in health.replicas
        ],
    }


def tenant_status(tenant: Tenant) -> dict:
    run = latest_run(tenant)
    steps = list(run.steps.order_by("position")) if run else []
    provision = (
        run
        if run is None or run.kind == ProvisioningRun.Kind.PROVISION
        else latest_run(tenant, ProvisioningRun.Kind.PROVISION)
    )
    return {
        "slug": tenant.slug,
        "org": tenant.org,
        "plan": tenant.plan.name,
        "state": tenant.state,
        "url": tenant.url,
        "attempt": provision.attempt if provision else 0,
        "current_step": current.step_id if (current := current_step(run, steps)) else None,
        "failed_step": (provision.failed_step or None) if provision else None,
        "error": (provision.error or None) if provision else None,
        "cancelled": bool(provision and provision.cancelled),
        "created_at": iso(tenant.created_at),
        "activated_at": iso(tenant.activated_at),
        "waiting": run_wait(run),
        "steps": [step_json(step) for step in steps],
        "workloads": workloads_json(tenant),
    }
