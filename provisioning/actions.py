"""Every operator-facing change of state: create, cancel, reset, retry, decommission.

Each action runs in one transaction, locks the tenant row (so two clicks or
two commands serialize), writes the change with its audit event (which
announces it), and enqueues work only once the transaction commits. Views,
commands and consumers parse input, call one of these, and render.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from provisioning.audit import record_event
from provisioning.context import VerifyContext
from provisioning.models import ProvisioningRun, StepRun, latest_run
from provisioning.queue import enqueue_run
from provisioning.steps import STEPS
from tenants.models import Tenant
from tenants.validation import validate_request

Kind = ProvisioningRun.Kind
RunStatus = ProvisioningRun.Status


class ActionError(Exception):
    """An operation that is not allowed now; the message says why and what to do."""


class AlreadyUnderWay(ActionError):
    """The same operation is already in progress: not an error for a double click."""


def _new_run(tenant: Tenant, kind: str, user, faults=None, reuse_from=None) -> ProvisioningRun:
    previous = tenant.runs.filter(kind=kind).order_by("-attempt").first()
    run = ProvisioningRun.objects.create(
        tenant=tenant,
        kind=kind,
        attempt=(previous.attempt + 1) if previous else 1,
        faults=faults or [],
        created_by=user,
    )
    reused = reuse_from or {}
    StepRun.objects.bulk_create(
        [
            StepRun(
                run=run,
                position=position,
                step_id=step.id,
                status=StepRun.Status.SKIPPED if step.id in reused else StepRun.Status.PENDING,
                outputs=reused.get(step.id, {}),
            )
            for position, step in enumerate(STEPS, start=1)
        ]
    )
    enqueue_run(run.pk)
    return run


def create_tenant(
    *, slug: str, org: str, plan: str, admin_email: str, user=None, faults=None
) -> Tenant:
    """Validate, record the tenant and its first run, and enqueue the run.

    Returns at once: the saga runs in a worker.
    """
    with transaction.atomic():
        request = validate_request(slug, org, plan, admin_email, user=user)
        tenant = Tenant.objects.create(
            slug=request.slug,
            org=request.org,
            plan=request.plan,
            admin_email=request.admin_email,
            created_by=user,
        )
        run = _new_run(tenant, Kind.PROVISION, user, faults=faults)
        record_event(
            "tenant.created",
            tenant=tenant,
            run=run,
            actor=user,
            details={
                "slug": tenant.slug,
                "org": tenant.org,
                "plan": tenant.plan.name,
                "admin_email": tenant.admin_email,
                "faults": [f"{f['step']}:{f['kind']}:{f['n']}" for f in faults or []],
            },
        )
    return tenant


def request_cancel(tenant: Tenant, *, user=None, reason: str = "") -> ProvisioningRun:
    with transaction.atomic():
        tenant = Tenant.objects.lock(pk=tenant.pk)
        run = latest_run(tenant)
        if tenant.state != Tenant.State.PROVISIONING or run is None or not run.is_live:
            raise ActionError(
                f"{tenant.slug} is {tenant.state}: "
                "only a tenant that is provisioning can be cancelled"
            )
        if run.cancel_requested or run.status == RunStatus.COMPENSATING:
            raise AlreadyUnderWay(f"cancel of {tenant.slug} is already under way")
        run.cancel_requested = True
        run.cancel_requested_at = timezone.now()
        fields = ["cancel_requested", "cancel_requested_at"]
        if run.is_parked:
            # Due at once: the event's notification below wakes the waiting
            # pump as this commits, and it claims the run and compensates.
            run.wake_at = run.cancel_requested_at
            fields.append("wake_at")
        run.save(update_fields=fields)
        record_event(
            "tenant.provisioning.cancel_requested",
            tenant=tenant,
            run=run,
            actor=user,
            details={"attempt": run.attempt, "reason": reason},
        )
        if run.lease_expires_at is None or run.lease_expires_at < timezone.now():
            # No worker is advancing it: enqueue so one compensates now.
            enqueue_run(run.pk)
    return run


def reset_provisioning(tenant: Tenant, *, user=None, reason: str = "") -> ProvisioningRun:
    """Clear the latest run's state so that a retry starts from the top."""
    with transaction.atomic():
        tenant = Tenant.objects.lock(pk=tenant.pk)
        run = latest_run(tenant, Kind.PROVISION)
        if run is None:
            raise ActionError(f"{tenant.slug} has no provisioning run to reset")
        now = timezone.now()
        if run.is_live and run.lease_expires_at and run.lease_expires_at > now:
            raise ActionError(
                f"{tenant.slug}: attempt {run.attempt} is running (a worker holds its lease); "
                "cancel it first, or wait for it to finish"
            )
        if run.is_parked:
            raise ActionError(
                f"{tenant.slug}: attempt {run.attempt} is waiting ({run.wait_reason}) and will "
                "go on by itself; cancel it first, or wait for it to finish"
            )
        stuck = tenant.state == Tenant.State.PROVISIONING and run.is_live  # its worker died
        if tenant.state != Tenant.State.FAILED and not stuck:
            raise ActionError(f"{tenant.slug} is {tenant.state}: only a failed tenant can be reset")
        if run.reset_at and not run.is_live:
            raise AlreadyUnderWay(f"attempt {run.attempt} of {tenant.slug} is already reset")
        was_live = run.is_live
        # A run left in flight by a dead worker ends here; the fence bump
        # refuses any write from that worker should it come back.
        run.fence += 1
        run.reset_at = now
        run.lease_owner, run.lease_expires_at = "", None
        if was_live:
            run.status = RunStatus.FAILED
            run.finished_at = now
            run.error = run.error or "Reset by operator while no worker held the run"
        run.save()
        tenant.state = Tenant.State.FAILED
        tenant.save(update_fields=["state", "updated_at"])
        record_event(
            "tenant.provisioning.reset",
            tenant=tenant,
            run=run,
            actor=user,
            details={"attempt": run.attempt, "reason": reason, "was_in_flight": was_live},
        )
    return run


def failed_attempts(tenant: Tenant) -> int:
    return tenant.runs.filter(kind=Kind.PROVISION, status=RunStatus.FAILED).count()


def retry_provisioning(
    tenant: Tenant, *, user=None, force: bool = False, reason: str = ""
) -> ProvisioningRun:
    """Start a new attempt, resuming after the steps whose work is still there."""
    with transaction.atomic():
        tenant = Tenant.objects.lock(pk=tenant.pk)
        previous = latest_run(tenant)
        if tenant.state == Tenant.State.PROVISIONING and previous and previous.is_live:
            raise AlreadyUnderWay(
                f"{tenant.slug} is already provisioning (attempt {previous.attempt})"
            )
        if tenant.state != Tenant.State.FAILED:
            raise ActionError(
                f"{tenant.slug} is {tenant.state}: only a failed tenant can be retried"
            )
        failures = failed_attempts(tenant)
        limit = settings.PROVISIONING_MAX_FAILED_ATTEMPTS
        if failures >= limit and not force:
            raise ActionError(
                f"{tenant.slug} has failed {failures} times; look at the error first, "
                "then retry with --force"
            )
        reuse = reusable_steps(previous) if previous and previous.kind == Kind.PROVISION else {}
        run = _new_run(tenant, Kind.PROVISION, user, reuse_from=reuse)
        tenant.state = Tenant.State.PROVISIONING
        tenant.save(update_fields=["state", "updated_at"])
        record_event(
            "tenant.provisioning.retried",
            tenant=tenant,
            run=run,
            actor=user,
            details={
                "attempt": run.attempt,
                "previous_attempt": previous.attempt if previous else None,
                "resumes_at": next((s.id for s in STEPS if s.id not in reuse), None),
                "forced": force and failures >= limit,
                "reason": reason,
            },
        )
    return run


def reusable_steps(previous: ProvisioningRun) -> dict[str, dict]:
    """The leading steps of ``previous`` whose work is recorded and still there.

    After compensation or a reset nothing is reusable, so the retry starts
    from the top (same tenant id, so the same deterministic names).
    """
    if previous.reset_at:
        return {}
    reuse: dict[str, dict] = {}
    for step_run, step in zip(previous.steps.order_by("position"), STEPS, strict=False):
        if step_run.step_id != step.id:
            break
        if step_run.status not in (StepRun.Status.SUCCEEDED, StepRun.Status.SKIPPED):
            break
        if not step.verify(VerifyContext(previous), step_run.outputs):
            break
        reuse[step.id] = step_run.outputs
    return reuse


def decommission_tenant(tenant: Tenant, *, user=None, reason: str = "") -> ProvisioningRun:
    with transaction.atomic():
        tenant = Tenant.objects.lock(pk=tenant.pk)
        current = latest_run(tenant)
        if tenant.state == Tenant.State.DECOMMISSIONING and current and current.is_live:
            raise AlreadyUnderWay(f"{tenant.slug} is already being decommissioned")
        if tenant.state == Tenant.State.DECOMMISSIONED:
            raise ActionError(f"{tenant.slug} is already decommissioned")
        if tenant.state == Tenant.State.PROVISIONING:
            raise ActionError(
                f"{tenant.slug} is provisioning: cancel it first, then decommission it"
            )
        if current and current.is_live:
            # Active already, but its run is still finishing (welcome emails):
            # one run at a time per tenant.
            raise ActionError(
                f"{tenant.slug}'s provisioning run is still finishing its last step; "
                "decommission it in a moment"
            )
        run = _new_run(tenant, Kind.DECOMMISSION, user)
        previous_state = tenant.state
        tenant.state = Tenant.State.DECOMMISSIONING
        tenant.save(update_fields=["state", "updated_at"])
        record_event(
            "tenant.decommission.started",
            tenant=tenant,
            run=run,
            actor=user,
            details={"from_state": previous_state, "reason": reason},
        )
    return run


def allowed_actions(tenant: Tenant) -> dict[str, tuple[bool, str]]:
    """Which operations the tenant's state allows now, each with why not.

    The console uses this to show, disable and explain buttons; the actions
    above enforce the same rules under the tenant's row lock.
    """
    run = latest_run(tenant)
    live = bool(run and run.is_live)
    state = tenant.state
    S = Tenant.State
    cancel = (True, "")
    if state != S.PROVISIONING or not live:
        cancel = (False, f"Only a provisioning tenant can be cancelled; this one is {state}.")
    elif run.cancel_requested or run.status == RunStatus.COMPENSATING:
        cancel = (False, "Cancel is already under way.")
    retry = (True, "")
    if state != S.FAILED:
        retry = (False, f"Only a failed tenant can be retried; this one is {state}.")
    reset = (True, "")
    if state != S.FAILED:
        reset = (False, f"Only a failed tenant can be reset; this one is {state}.")
    elif run and run.kind == Kind.PROVISION and run.reset_at:
        reset = (False, "The last attempt is already reset; retry starts from the top.")
    decommission = (True, "")
    if live and state == S.ACTIVE:
        decommission = (False, "The provisioning run is still finishing its last step.")
    elif state == S.PROVISIONING:
        decommission = (False, "Cancel provisioning first, then decommission.")
    elif state == S.DECOMMISSIONING and live:
        decommission = (False, "Decommissioning is already under way.")
    elif state == S.DECOMMISSIONED:
        decommission = (False, "This tenant is decommissioned.")
    return {"cancel": cancel, "retry": retry, "reset": reset, "decommission": decommission}


def needs_force(tenant: Tenant) -> bool:
    """A retry now would be past the failed-attempts limit (the console asks to confirm)."""
    return failed_attempts(tenant) >= settings.PROVISIONING_MAX_FAILED_ATTEMPTS
