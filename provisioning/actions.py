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

from provisioning import faults as fault_specs
from provisioning.audit import record_event
from provisioning.context import VerifyContext
from provisioning.models import ProvisioningRun, StepRun, latest_run
from provisioning.queue import enqueue_run
from provisioning.status import current_step
from provisioning.steps import STEPS
from tenants.models import Tenant
from tenants.validation import validate_request

Kind = ProvisioningRun.Kind
RunStatus = ProvisioningRun.Status


class ActionError(Exception):
    """An operation that is not allowed now; the message says why and what to do."""


class AlreadyUnderWay(ActionError):
    """The same operation is already in progress: not an error for a double click."""


def _new_run(
    tenant: Tenant, kind: str, user, faults=None, reuse_from=None, *, first: bool = False
) -> ProvisioningRun:
    """``first``: the tenant was created in this transaction, so it has no earlier run."""
    previous = None if first else tenant.runs.filter(kind=kind).order_by("-attempt").first()
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
    enqueue_run(run.pk, unless_listened=True)
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
        run = _new_run(tenant, Kind.PROVISION, user, faults=faults, first=True)
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
                "faults": [fault_specs.describe(f) for f in faults or []],
            },
        )
    return tenant


def request_cancel(tenant: Tenant, *, user=None, reason: str = "") -> ProvisioningRun:
    with transaction.atomic():
        tenant = Tenant.objects.lock(pk=tenant.pk)
        run = latest_run(tenant)
        refuse(cancel_refusal(tenant, run))
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
        now = timezone.now()
        refuse(reset_refusal(tenant, run, now))
        was_live = run.is_live
        # The fence bump refuses any write from the run's dead worker should
        # it come back.
        run.fence += 1
        run.reset_at = now
        run.lease_owner, run.lease_expires_at = "", None
        if was_live:
            # A run left in flight by a dead worker does not just stop: the
            # next worker undoes what it made, as after a failure, and it ends
            # failed (the tenant with it). Ended here, it left the interrupted
            # step's work behind, which reconcile then called an orphan (found
            # by tests/test_fuzz_operations.py).
            step = current_step(run, list(run.steps.order_by("position")))
            run.status = RunStatus.COMPENSATING
            run.wake_at, run.wait_reason = None, ""
            run.failed_step = run.failed_step or (step.step_id if step else "")
            run.error = run.error or "Reset by operator while no worker held the run"
            run.error_category = run.error_category or "platform"
            enqueue_run(run.pk)
        run.save()
        if not was_live:
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
        failures = failed_attempts(tenant)
        refuse(retry_refusal(tenant, previous, failures=failures, force=force))
        limit = settings.PROVISIONING_MAX_FAILED_ATTEMPTS
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
        refuse(decommission_refusal(tenant, current))
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


# ---------------------------------------------------------------- may it happen now?
#
# One predicate per action answers "may this happen now, and if not, why?":
# the action asks it under the tenant's row lock and raises its answer; the
# console asks it (``allowed_actions``) to offer a button or grey it out with
# the same words. Each returns the refusal it would raise, or None.


def refuse(refusal: ActionError | None) -> None:
    if refusal is not None:
        raise refusal


def cancel_refusal(tenant: Tenant, run: ProvisioningRun | None) -> ActionError | None:
    """``run``: the tenant's latest run."""
    if tenant.state != Tenant.State.PROVISIONING or run is None or not run.is_live:
        return ActionError(
            f"{tenant.slug} is {tenant.state}: only a tenant that is provisioning can be cancelled"
        )
    if run.cancel_requested or run.status == RunStatus.COMPENSATING:
        return AlreadyUnderWay(f"cancel of {tenant.slug} is already under way")
    return None


def reset_refusal(tenant: Tenant, run: ProvisioningRun | None, now=None) -> ActionError | None:
    """``run``: the tenant's latest provisioning run.

    Allowed for a failed tenant, and for a run in flight that nobody advances:
    its lease expired (its worker died) and it is not parked, or it was never
    claimed for longer than the reaper allows a queued run (its task was lost).
    """
    from provisioning.reaper import UNCLAIMED_GRACE

    if run is None:
        return ActionError(f"{tenant.slug} has no provisioning run to reset")
    now = now or timezone.now()
    if (
        run.status == RunStatus.QUEUED
        and run.lease_expires_at is None
        and run.created_at > now - UNCLAIMED_GRACE
    ):
        # Not stuck: a worker claims it within moments (found by the fuzz of
        # operator actions, which reset runs a worker was about to start).
        return ActionError(
            f"{tenant.slug}: attempt {run.attempt} is queued and a worker will start it; "
            "cancel it first, or wait for it to finish"
        )
    if run.is_live and run.lease_expires_at and run.lease_expires_at > now:
        return ActionError(
            f"{tenant.slug}: attempt {run.attempt} is running (a worker holds its lease); "
            "cancel it first, or wait for it to finish"
        )
    if run.is_parked:
        return ActionError(
            f"{tenant.slug}: attempt {run.attempt} is waiting ({run.wait_reason}) and will "
            "go on by itself; cancel it first, or wait for it to finish"
        )
    if run.reset_at and run.is_live:
        return AlreadyUnderWay(
            f"attempt {run.attempt} of {tenant.slug} is already reset; a worker is undoing "
            "what it made"
        )
    stuck = tenant.state == Tenant.State.PROVISIONING and run.is_live  # its worker died
    if tenant.state != Tenant.State.FAILED and not stuck:
        return ActionError(f"{tenant.slug} is {tenant.state}: only a failed tenant can be reset")
    if run.reset_at and not run.is_live:
        return AlreadyUnderWay(
            f"attempt {run.attempt} of {tenant.slug} is already reset; "
            "a retry starts from the first step"
        )
    return None


def retry_refusal(
    tenant: Tenant, previous: ProvisioningRun | None, *, failures: int, force: bool
) -> ActionError | None:
    """``previous``: the tenant's latest run; ``failures``: its failed provisioning attempts."""
    if tenant.state == Tenant.State.PROVISIONING and previous and previous.is_live:
        return AlreadyUnderWay(
            f"{tenant.slug} is already provisioning (attempt {previous.attempt})"
        )
    if tenant.state != Tenant.State.FAILED:
        return ActionError(f"{tenant.slug} is {tenant.state}: only a failed tenant can be retried")
    if failures >= settings.PROVISIONING_MAX_FAILED_ATTEMPTS and not force:
        return ActionError(
            f"{tenant.slug} has failed {failures} times; read the error first, then retry "
            "anyway (--force)"
        )
    return None


def decommission_refusal(tenant: Tenant, current: ProvisioningRun | None) -> ActionError | None:
    """``current``: the tenant's latest run."""
    if tenant.state == Tenant.State.DECOMMISSIONING and current and current.is_live:
        return AlreadyUnderWay(f"{tenant.slug} is already being decommissioned")
    if tenant.state == Tenant.State.DECOMMISSIONED:
        return ActionError(f"{tenant.slug} is already decommissioned")
    if tenant.state == Tenant.State.PROVISIONING:
        return ActionError(f"{tenant.slug} is provisioning: cancel it first, then decommission it")
    if current and current.is_live:
        # Active already, but its run is still finishing (welcome emails):
        # one run at a time per tenant.
        return ActionError(
            f"{tenant.slug}'s provisioning run is still finishing its last step; "
            "decommission it in a moment"
        )
    return None


def repair_refusal(tenant: Tenant) -> ActionError | None:
    """Repair acts only on an active tenant with no run in flight (repair.not_repairable)."""
    from provisioning import repair  # it imports the drivers, which need the app registry

    why = repair.not_repairable(tenant)
    return ActionError(why) if why else None


def repair_tenant(tenant: Tenant, *, user=None, reason: str = "", source: str = "operator"):
    """Bring an active tenant's workloads and route to its plan now (provisioning.repair).

    Not one transaction: it waits on the workload driver. Each repair it makes
    is recorded (with ``reason``) as it is made; returns the repair's Outcome.
    """
    from provisioning import repair

    tenant = Tenant.objects.select_related("plan").get(pk=tenant.pk)
    refuse(repair_refusal(tenant))
    outcome = repair.repair_tenant(tenant, actor=user, reason=reason, source=source)
    if outcome.skipped:  # it changed meanwhile, or another repair of it is running
        raise ActionError(outcome.skipped)
    return outcome


_READ_IT = object()  # allowed_actions reads the latest run itself


def allowed_actions(tenant: Tenant, run=_READ_IT) -> dict[str, tuple[bool, str]]:
    """Which operations the tenant's state allows now, each with why not.

    The same predicates the actions raise from, so the console offers exactly
    what an action accepts. Retry is asked as the dialog sends it: past the
    failed-attempts limit the dialog asks to confirm (``needs_force``).
    ``run``: the tenant's latest run, when the caller has just read it.
    """
    if run is _READ_IT:
        run = latest_run(tenant)
    provision = (
        run if run is None or run.kind == Kind.PROVISION else latest_run(tenant, Kind.PROVISION)
    )
    refusals = {
        "cancel": cancel_refusal(tenant, run),
        "retry": retry_refusal(tenant, run, failures=0, force=True),
        "reset": reset_refusal(tenant, provision),
        "repair": repair_refusal(tenant),
        "decommission": decommission_refusal(tenant, run),
    }
    return {name: (r is None, str(r) if r else "") for name, r in refusals.items()}


def needs_force(tenant: Tenant) -> bool:
    """A retry now would be past the failed-attempts limit (the console asks to confirm)."""
    return failed_attempts(tenant) >= settings.PROVISIONING_MAX_FAILED_ATTEMPTS
