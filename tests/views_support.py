"""Tenants in a given state for view tests, without running the saga.

The engine's own tests drive real runs; here the rows are written as the
ledger would leave them, so that pages can be checked quickly and exactly.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from provisioning import actions
from provisioning.audit import record_event
from provisioning.models import ProvisioningRun, StepRun
from provisioning.steps import STEP_IDS
from tenants.models import Tenant
from tests.conftest import new_tenant

OUTPUTS = {
    "validate": {"slug": "x", "plan": "free"},
    "allocate_storage": {"schema": "t1_acme"},
    "allocate_identity": {"identity_id": 1, "admin_email": "admin@example.com"},
    "allocate_network": {"network": "tpc-t1-acme", "route_id": 1, "hostname": "acme.local"},
    "seed_schema": {"schema": "t1_acme", "tables": ["projects", "settings", "users"]},
    "deploy_workloads": {"driver": "process", "replicas": [{"name": "tpc-t1-acme-r1"}]},
}


def create(user, slug="acme", plan="free", org="demo") -> Tenant:
    return new_tenant(slug, plan=plan, org=org, user=user)


def run_of(tenant: Tenant) -> ProvisioningRun:
    return actions.latest_run(tenant)


def start(tenant: Tenant, upto: str = "deploy_workloads", progress: dict | None = None):
    """The run is at ``upto``: the steps before it succeeded, ``upto`` is running."""
    run = run_of(tenant)
    now = timezone.now()
    run.status = ProvisioningRun.Status.RUNNING
    run.started_at = now - timedelta(seconds=5)
    run.lease_owner, run.lease_expires_at = "test-worker", now + timedelta(seconds=30)
    run.save()
    for step in run.steps.order_by("position"):
        if step.position < STEP_IDS.index(upto) + 1:
            step.status = StepRun.Status.SUCCEEDED
            step.attempts = 1
            step.started_at = now - timedelta(seconds=5)
            step.finished_at = now - timedelta(seconds=4)
            step.outputs = OUTPUTS.get(step.step_id, {})
        elif step.step_id == upto:
            step.status = StepRun.Status.RUNNING
            step.attempts = 1
            step.started_at = now - timedelta(seconds=2)
            step.progress = progress or {}
        step.save()
    return run


def fail(tenant: Tenant, step_id="deploy_workloads", *, cancelled=False, compensated=True,
         error="image tenant-console/workload:1 not found", category="image_missing"):  # fmt: skip
    """The run failed at ``step_id`` (or was cancelled there) and was compensated."""
    run = start(tenant, step_id)
    now = timezone.now()
    for step in run.steps.order_by("position"):
        if step.step_id == step_id and not cancelled:
            step.status = StepRun.Status.FAILED
            step.error, step.error_category = error, category
            step.finished_at = now
        # A cancel leaves the running step as it was; compensation undoes it too.
        started = (StepRun.Status.SUCCEEDED, StepRun.Status.FAILED, StepRun.Status.RUNNING)
        if compensated and step.status in started:
            step.status = StepRun.Status.COMPENSATED
        step.save()
    run.status = ProvisioningRun.Status.FAILED
    run.finished_at = now
    run.lease_owner, run.lease_expires_at = "", None
    run.failed_step = "" if cancelled else step_id  # as the engine records a cancel
    run.cancelled = cancelled
    run.error = "Cancelled by operator" if cancelled else error
    run.error_category = "cancelled" if cancelled else category
    run.save()
    Tenant.objects.filter(pk=tenant.pk).update(state=Tenant.State.FAILED)
    kind = "tenant.provisioning.cancelled" if cancelled else "tenant.provisioning.failed"
    record_event(
        kind,
        tenant=tenant,
        run=run,
        details={"attempt": run.attempt, "failed_step": run.failed_step, "error": run.error},
    )
    tenant.refresh_from_db()
    return run


def activate(tenant: Tenant):
    run = run_of(tenant)
    now = timezone.now()
    run.steps.update(status=StepRun.Status.SUCCEEDED, attempts=1, started_at=now, finished_at=now)
    run.status = ProvisioningRun.Status.SUCCEEDED
    run.started_at, run.finished_at = now - timedelta(seconds=9), now
    run.save()
    Tenant.objects.filter(pk=tenant.pk).update(state=Tenant.State.ACTIVE, activated_at=now)
    record_event(
        "tenant.provisioning.completed",
        tenant=tenant,
        run=run,
        details={"message": "Tenant activated", "url": tenant.url},
    )
    tenant.refresh_from_db()
    return run
