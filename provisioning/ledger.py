"""Fenced writes of a run's state, each with its audit event.

Every function here takes the worker's ``Lease`` and writes only if the run
still names that lease (owner and fence) and is still in flight: a worker
that lost its lease, or whose run was reset, retried or finished meanwhile,
gets ``Fenced`` and writes nothing. Each call is its own committed
transaction, so "running" is on record before a step's side effects begin.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import BooleanField, ExpressionWrapper, Q
from django.db.models.functions import Now
from django.utils import timezone

from provisioning.audit import announce, notify_params, notify_sql, record_event, topics_for
from provisioning.errors import Cancelled, Fenced, PermanentError, StepError
from provisioning.models import ProvisioningRun, StepLogLine, StepRun
from provisioning.status import current_step
from provisioning.steps import BY_ID, label_of
from tenants.models import Tenant

Status = StepRun.Status
RunStatus = ProvisioningRun.Status
# The step memo's key for when an engine outage began (engine._retry_outage).
OUTAGE_SINCE = "outage_since"
# For the raw statements below; the model's list is the one truth.
LIVE = [str(status) for status in ProvisioningRun.LIVE]


@dataclass(frozen=True)
class Lease:
    run_id: int
    owner: str
    fence: int
    # The run's resume count as this claim left it (see claim).
    resumes: int = 0
    # The claim picked up a parked run: its step goes on with its next check
    # rather than a new attempt (engine._run_step).
    parked: bool = False
    # How long after its wake_at a parked run was claimed (database clock).
    late_s: float | None = None
    # The run's tenant: the topics of the lean writes' notifications.
    tenant_id: int | None = None
    # Whether a cancel was waiting when the claim took the run.
    cancel: bool = False
    # This process's monotonic clock when the claim was sent: the lease is
    # ours for at most its length from then (RunState.check_lease).
    sent_at: float = 0.0


# What a worker may claim: a live run that no live lease holds. A parked run
# only once it is due, or when a cancel is waiting for it.
_CLAIMABLE = """
       status = ANY(%s)
   AND (wake_at IS NULL OR wake_at <= now() OR cancel_requested)
"""
# A claim takes the lease and bumps the fence. A claim of a run that had
# already started and was not parked (its worker died, or an unexpected error
# let the lease go) counts a resume in the same statement, so two racing
# claims cannot both miss it. The CTE reads the row as it was (was it
# parked?), locks it, and PostgreSQL re-checks its conditions after any wait
# for that lock, so exactly one of two racing claimants gets the row.
_CLAIM = """
WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true)),
target AS (
    SELECT id, wake_at IS NOT NULL AS parked,
           extract(epoch FROM clock_timestamp() - wake_at) AS late_s
      FROM provisioning_provisioningrun
     WHERE {where}
     {order}
       FOR UPDATE {skip}
)
UPDATE provisioning_provisioningrun AS run
   SET lease_owner = %s,
       lease_expires_at = now() + make_interval(secs => %s),
       heartbeat_at = now(),
       fence = run.fence + 1,
       resumes = run.resumes
                 + CASE WHEN run.status = 'queued' OR target.parked THEN 0 ELSE 1 END,
       status = CASE WHEN run.status = 'queued' THEN 'running' ELSE run.status END,
       wake_at = NULL,
       wait_reason = ''
  FROM target
 WHERE run.id = target.id
RETURNING run.id, run.fence, run.resumes, target.parked, target.late_s, run.tenant_id,
          run.cancel_requested, (SELECT 1 FROM lazy)
"""


def _claim(sql: str, params: list, owner: str) -> Lease | None:
    sent = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    late = None if row[4] is None else float(row[4])
    return Lease(row[0], owner, row[1], row[2], row[3], late, row[5], row[6], sent)


def claim(run_id: int, owner: str, ttl: float) -> Lease | None:
    """Take this run's lease if it is free or expired (and, parked, due); None otherwise.

    The database's clock is the only clock, so hosts with skewed clocks still
    agree on expiry and on when a parked run is due.
    """
    where = "id = %s AND (lease_expires_at IS NULL OR lease_expires_at < now()) AND " + _CLAIMABLE
    sql = _CLAIM.format(where=where, order="", skip="")
    return _claim(sql, [run_id, LIVE, owner, ttl], owner)


def claim_due(owner: str, ttl: float) -> Lease | None:
    """Take the lease of any run that is due: queued and unclaimed, parked and due,
    parked with a cancel waiting, or held by a worker that went silent (its
    lease expired with its owner still named: the worker died, or lost the
    database for longer than the lease). None when nothing is due.

    A run whose worker let go after an unexpected error (owner cleared, lease
    expired) is not taken here: the reaper resumes those at its own pace, so
    a run that keeps breaking workers is not retried in a tight loop. SKIP
    LOCKED lets several pumps take different runs without queueing behind
    each other. The earliest due goes first.
    """
    where = (
        "((lease_expires_at IS NULL AND "
        + _CLAIMABLE
        + ") OR (lease_owner <> '' AND lease_expires_at < now() AND status = ANY(%s)))"
    )
    order = "ORDER BY coalesce(wake_at, lease_expires_at, created_at), id LIMIT 1"
    sql = _CLAIM.format(where=where, order=order, skip="SKIP LOCKED")
    return _claim(sql, [LIVE, LIVE, owner, ttl], owner)


def next_wake() -> float | None:
    """Seconds until the next run comes due (0 if one is overdue): the earliest
    parked run's wake time, or the earliest lease that will expire unless its
    worker renews it. None if no run is parked or held.

    Measured on the database's clock, which is the one claims compare with.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT extract(epoch FROM min(CASE WHEN lease_expires_at IS NULL THEN wake_at
                                               WHEN lease_owner <> '' THEN lease_expires_at
                                          END) - clock_timestamp())
              FROM provisioning_provisioningrun
             WHERE status = ANY(%s)
               AND ((wake_at IS NOT NULL AND lease_expires_at IS NULL) OR lease_owner <> '')
            """,
            [LIVE],
        )
        row = cursor.fetchone()
    # (Not greatest(0, ...) in SQL: it ignores a NULL, and "none parked" would read 0.)
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


def heartbeat(lease: Lease, ttl: float) -> bool:
    """Extend the lease; return whether cancel was requested. Raises Fenced."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE provisioning_provisioningrun
               SET lease_expires_at = now() + make_interval(secs => %s), heartbeat_at = now()
             WHERE id = %s AND lease_owner = %s AND fence = %s AND status = ANY(%s)
         RETURNING cancel_requested
            """,
            [ttl, lease.run_id, lease.owner, lease.fence, LIVE],
        )
        row = cursor.fetchone()
    if row is None:
        raise Fenced(f"run {lease.run_id}: lease lost")
    return row[0]


def cancel_requested(lease: Lease) -> bool:
    run = ProvisioningRun.objects.filter(pk=lease.run_id).values("cancel_requested").first()
    return bool(run and run["cancel_requested"])


@contextlib.contextmanager
def fenced(lease: Lease, *, during_cancel: bool = False):
    """A transaction that holds the run row and proves the lease is still ours.

    Refused (Fenced) when another claim, a reset or a finish bumped the fence
    or the lease expired; refused (Cancelled) once a cancel was requested,
    except for the writes that carry the cancel out (``during_cancel``).
    """
    with transaction.atomic():
        # The lock order of Tenant.objects.lock: the tenant, then the run.
        tenant = Tenant.objects.lock(runs__pk=lease.run_id)
        run = (
            ProvisioningRun.objects.select_for_update(no_key=True, of=("self",))
            .annotate(
                lease_expired=ExpressionWrapper(
                    Q(lease_expires_at__lt=Now()), output_field=BooleanField()
                )
            )
            .get(pk=lease.run_id)
        )
        run.tenant = tenant
        if run.lease_owner != lease.owner or run.fence != lease.fence or not run.is_live:
            raise Fenced(f"run {lease.run_id}: fence {lease.fence} is stale")
        if run.lease_expired:
            raise Fenced(f"run {lease.run_id}: lease expired")
        if run.cancel_requested and not during_cancel:
            raise Cancelled()
        yield run


# ------------------------------------------------------------ lean writes
#
# The hot transitions (a step starts, a step succeeds and the next one
# starts, the run succeeds) are each ONE statement in autocommit: the fence
# check, the row writes, their audit events and their notifications travel
# to PostgreSQL together and commit together. The fence is the WHERE clause of
# the ``run`` CTE, which also locks the run row (FOR NO KEY UPDATE, as
# ``fenced`` does) so a reset or a claim cannot slip in between the check and
# the writes. When the CTE finds nothing, the writes find nothing either
# (each is bound to the run's id), and ``_refusal`` says why: the same
# Fenced/Cancelled outcomes as ``fenced``. Transitions that run code of the
# step inside the transaction (``on_success``) or change the tenant keep
# ``fenced``.
#
# Lazy durability. These writes (and claims) commit with synchronous_commit
# off: PostgreSQL acknowledges the commit before its WAL reaches the disk,
# which on this kind of machine saves about 2 ms of fsync per transition. A
# worker's crash loses nothing (the commit is in PostgreSQL's memory, in
# order); only a crash of PostgreSQL itself can lose the last few hundred
# ms of them, and then the run is as it was a moment earlier: a step
# recorded done runs again (steps are idempotent). What must never be lost is
# "running" before a step's effect on the outside world, so a step's first
# Docker call, file or email is preceded by ``heartbeat`` (StepContext's
# guard), a durable commit that also flushes every lazy one before it, and
# the step's own SQL writes go to the same WAL after its start, so they
# cannot survive a crash that its start did not. The run's end is durable.

_FENCE_CTE = """
lazy AS (SELECT set_config('synchronous_commit', %(commit)s, true)),
run AS (
    SELECT id, tenant_id
      FROM provisioning_provisioningrun
     WHERE id = %(run)s AND lease_owner = %(owner)s AND fence = %(fence)s
       AND status = ANY(%(live)s) AND lease_expires_at >= now()
       AND (%(during_cancel)s OR NOT cancel_requested)
       FOR NO KEY UPDATE
)"""
_STEP_SETS = {
    "start": """status = 'running', attempts = %({p}attempts)s,
                started_at = coalesce(started_at, %(now)s), attempt_started_at = %(now)s,
                memo = CASE WHEN memo ? 'outage_since'
                            THEN jsonb_build_object('outage_since', memo -> 'outage_since')
                            ELSE '{{}}'::jsonb END,
                next_attempt_at = NULL""",
    "succeed": """status = 'succeeded', finished_at = %(now)s,
                  outputs = %({p}outputs)s::jsonb, next_attempt_at = NULL""",
}
# What a lean write may set on the run row (one update of it per statement).
_RUN_SETS = {
    "started": "started_at = %(now)s",
    "succeeded": """status = 'succeeded', finished_at = %(now)s, lease_owner = '',
                    lease_expires_at = NULL, wake_at = NULL, wait_reason = '',
                    error = '', error_category = ''""",
}
_EVENTS_CTE = """
events AS (
    INSERT INTO provisioning_auditevent (type, tenant_id, run_id, actor, details, created_at)
    SELECT e.type, run.tenant_id, run.id, 'system', e.details, %(now)s
      FROM run, jsonb_to_recordset(%(events)s::jsonb) AS e(type text, details jsonb, n int)
     ORDER BY e.n
 RETURNING seq
)"""
# One notification per event (the hub toasts by seq), or one without a seq.
_NOTIFY = """
SELECT run.id, (SELECT count({notify}) {source}), (SELECT 1 FROM lazy)
  FROM run"""


def _json(value) -> str:
    return json.dumps(value, cls=DjangoJSONEncoder, separators=(",", ":"))


def _write(
    lease: Lease,
    *,
    steps: list[tuple[str, StepRun, dict]] = (),
    events: list[tuple[str, dict]] = (),
    now: datetime,
    then_start: StepRun | None = None,
    run_sets: str = "",
    during_cancel: bool = False,
    durable: bool = False,
) -> None:
    """One fenced statement: ``steps`` are (kind in _STEP_SETS, step, params);
    ``then_start`` a step to start in it too; ``run_sets`` a key of _RUN_SETS
    for the run row itself. Announced on the tenant's topics."""
    steps, events = list(steps), list(events)
    if then_start is not None:
        write, event = _start(then_start, now)
        steps.append(write)
        events.append(event)
    topics = _tenant_topics(lease)
    ctes = [_FENCE_CTE]
    params = {
        "run": lease.run_id,
        "owner": lease.owner,
        "fence": lease.fence,
        "live": LIVE,
        "during_cancel": during_cancel,
        "commit": "on" if durable else "off",
        "now": now,
        **notify_params(topics),
        "events": _json([{"type": t, "details": d, "n": n} for n, (t, d) in enumerate(events)]),
    }
    for n, (kind, step, own) in enumerate(steps):
        prefix = f"s{n}_"
        ctes.append(
            f"s{n} AS (UPDATE provisioning_steprun SET "
            + _STEP_SETS[kind].format(p=prefix)
            + f" WHERE id = %({prefix}id)s AND run_id = (SELECT id FROM run) RETURNING id)"
        )
        params[f"{prefix}id"] = step.pk
        params.update({prefix + key: value for key, value in own.items()})
    if run_sets:
        ctes.append(
            "run_row AS (UPDATE provisioning_provisioningrun SET "
            + _RUN_SETS[run_sets]
            + " WHERE id = (SELECT id FROM run) RETURNING id)"
        )
    if events:
        ctes.append(_EVENTS_CTE)
    notify = (
        _NOTIFY.format(notify=notify_sql("seq"), source="FROM events")
        if events
        else _NOTIFY.format(notify=notify_sql("'null'"), source="")
    )
    sql = "WITH " + ",".join(ctes) + notify
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        _refusal(lease, during_cancel=during_cancel)


def _refusal(lease: Lease, *, during_cancel: bool):
    """Why a lean write found no run to write to: raise what ``fenced`` would."""
    run = (
        ProvisioningRun.objects.filter(pk=lease.run_id)
        .annotate(
            lease_expired=ExpressionWrapper(
                Q(lease_expires_at__lt=Now()), output_field=BooleanField()
            )
        )
        .values("lease_owner", "fence", "status", "cancel_requested", "lease_expired")
        .first()
    )
    if (
        run is None
        or run["lease_owner"] != lease.owner
        or run["fence"] != lease.fence
        or run["status"] not in LIVE
    ):
        raise Fenced(f"run {lease.run_id}: fence {lease.fence} is stale")
    if run["lease_expired"] is not False:
        raise Fenced(f"run {lease.run_id}: lease expired")
    if run["cancel_requested"] and not during_cancel:
        raise Cancelled()
    raise Fenced(f"run {lease.run_id}: refused")  # not reached: the CTE's conditions


def _tenant_topics(lease: Lease) -> list[str]:
    """What ``topics_for(tenant)`` names, from the lease alone."""
    return [f"tenant-{lease.tenant_id}", "tenants", "audit"]


def _start(step: StepRun, now: datetime) -> tuple[tuple, tuple]:
    """The in-memory side of starting ``step``, and its (write, event) for ``_write``."""
    step.status = Status.RUNNING
    step.attempts += 1
    step.started_at = step.started_at or now
    step.attempt_started_at = now
    # An attempt's memo starts empty, but for when an engine outage began
    # (the engine retries one for a time, across attempts: engine._retry_outage).
    step.memo = {key: value for key, value in (step.memo or {}).items() if key == OUTAGE_SINCE}
    step.next_attempt_at = None
    return (
        ("start", step, {"attempts": step.attempts}),
        ("tenant.provisioning.step_started", _step_details(step)),
    )


def _step_details(step: StepRun, **extra) -> dict:
    return {"step": step.step_id, "position": step.position, "attempt": step.attempts, **extra}


def run_started(lease: Lease, run: ProvisioningRun, *, then_start: StepRun | None = None) -> None:
    """Record the run's start (once: a resumed run started before) and, in the same
    commit, start ``then_start``, its first step to run."""
    if run.started_at is not None:
        if then_start is not None:
            step_started(lease, then_start)
        return
    now = timezone.now()
    writes, events = [], []
    if run.kind == ProvisioningRun.Kind.PROVISION:
        details = {"attempt": run.attempt, "plan": run.tenant.plan.name}
        events.append(("tenant.provisioning.started", details))
    _write(
        lease,
        steps=writes,
        events=events,
        now=now,
        then_start=then_start,
        run_sets="started",
        during_cancel=then_start is None,
    )
    run.started_at = now


def step_started(lease: Lease, step: StepRun) -> None:
    _write(lease, now=timezone.now(), then_start=step)


def step_stalled(run_id: int, step_id: int, details: dict) -> bool:
    """Mark a step stalled and record ``tenant.provisioning.stalled``, once per step run.

    No lease is needed: a parked run has none, and whoever checks (the
    heartbeat of the worker holding the run, or a pump for parked runs) only
    adds this marker. The conditional UPDATE on ``stalled_at IS NULL``, under
    the run's row lock, is what keeps it to one event: a second call, from a
    later check or another process, changes nothing and records nothing. A run
    that finished or has a cancel waiting gets nothing. Returns whether this
    call recorded the event.
    """
    with transaction.atomic():
        tenant = Tenant.objects.lock(runs__pk=run_id)
        run = ProvisioningRun.objects.select_for_update(no_key=True).get(pk=run_id)
        if not run.is_live or run.cancel_requested:
            return False
        marked = StepRun.objects.filter(
            pk=step_id,
            run_id=run.pk,
            stalled_at__isnull=True,
            status__in=(Status.RUNNING, Status.RETRYING),
        ).update(stalled_at=timezone.now())
        if not marked:
            return False
        record_event("tenant.provisioning.stalled", tenant=tenant, run=run, details=details)
        return True


def _wake_time(seconds: float) -> datetime:
    """Now plus ``seconds`` on the database's clock, the one claims compare wake_at with."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp() + make_interval(secs => %s)", [seconds])
        return cursor.fetchone()[0]


def _release_parked(run: ProvisioningRun, wake_at: datetime, reason: str) -> None:
    """Let go of the lease until ``wake_at`` (inside the fenced transaction that holds the row).

    From the commit on, no worker holds the run: the worker that parked it
    moves on, and any pump claims it when it is due (or at once on a cancel).
    """
    run.lease_owner, run.lease_expires_at = "", None
    run.wake_at, run.wait_reason = wake_at, reason[:300]
    run.save(update_fields=["lease_owner", "lease_expires_at", "wake_at", "wait_reason"])


def park(lease: Lease, step: StepRun, *, seconds: float, progress: dict, reason: str) -> datetime:
    """Park the run: the step's progress (with its next check) and memo, then no lease until due.

    One transaction, so the page never shows a next check that is not on
    record. Refused (Cancelled) once a cancel is requested: the engine then
    compensates instead. Returns the wake time.
    """
    with fenced(lease) as run:
        wake_at = _wake_time(seconds)
        step.progress = {**progress, "next_check_at": wake_at.isoformat()}
        StepRun.objects.filter(pk=step.pk).update(progress=step.progress, memo=step.memo)
        _release_parked(run, wake_at, reason)
        announce([f"tenant-{run.tenant_id}", "tenants"])
        return wake_at


def step_retrying(
    lease: Lease, step: StepRun, error: StepError, delay: float, reason: str = ""
) -> datetime:
    """Record a failed attempt and park the run for the backoff ``delay``; returns when
    the next attempt is due. The backoff holds no worker: any pump starts the
    next attempt when it is due. ``reason`` (default: which attempt failed) is
    what the run waits for; it is also the step's progress line."""
    with fenced(lease) as run:
        next_at = _wake_time(delay)
        step.status = Status.RETRYING
        step.error = str(error)
        step.error_category = error.category
        step.next_attempt_at = next_at
        fields = ["status", "error", "error_category", "next_attempt_at", "memo"]
        if reason:
            step.progress = {"message": reason}
            fields.append("progress")
        step.save(update_fields=fields)
        reason = reason or f"retrying {label_of(step.step_id)} after attempt {step.attempts} failed"
        _release_parked(run, next_at, reason)
        record_event(
            "tenant.provisioning.step_retrying",
            tenant=run.tenant,
            run=run,
            details=_step_details(
                step, error=str(error), category=error.category, next_attempt_at=next_at.isoformat()
            ),
        )
        return next_at


def step_succeeded(
    lease: Lease,
    step: StepRun,
    outputs: dict,
    on_success=None,
    *,
    then_start: StepRun | None = None,
    then_finish: bool = False,
) -> None:
    """Record a step's success; in the same commit start ``then_start`` (the next step)
    or, with ``then_finish``, end the run succeeded.

    ``on_success`` (code of the step that must commit with its success) takes
    the slower ``fenced`` transaction; the chaining is then left to the caller.
    """
    if on_success is not None:
        with fenced(lease) as run:
            _succeeded(step, outputs, timezone.now())
            StepRun.objects.filter(pk=step.pk).update(
                status=step.status,
                finished_at=step.finished_at,
                outputs=outputs,
                next_attempt_at=None,
            )
            record_event(
                "tenant.provisioning.step_completed",
                tenant=run.tenant,
                run=run,
                details=_completed_details(step),
            )
            on_success()
        return
    now = timezone.now()
    _succeeded(step, outputs, now)
    writes = [("succeed", step, {"outputs": _json(outputs)})]
    events = [("tenant.provisioning.step_completed", _completed_details(step))]
    _write(
        lease,
        steps=writes,
        events=events,
        now=now,
        then_start=then_start,
        run_sets="succeeded" if then_finish else "",
        durable=then_finish,
    )


def _succeeded(step: StepRun, outputs: dict, now: datetime) -> None:
    step.status = Status.SUCCEEDED
    step.finished_at = now
    step.outputs = outputs
    step.next_attempt_at = None


def _completed_details(step: StepRun) -> dict:
    return _step_details(step, outcome="succeeded", duration_s=step.duration_s)


def step_failed(lease: Lease, step: StepRun, error: StepError, *, best_effort: bool) -> None:
    with fenced(lease, during_cancel=True) as run:
        step.status = Status.FAILED
        step.finished_at = timezone.now()
        step.error = str(error)
        step.error_category = error.category
        step.next_attempt_at = None
        step.save(
            update_fields=["status", "finished_at", "error", "error_category", "next_attempt_at"]
        )
        if best_effort:
            # The tenant stays as it is; the event says the step gave up.
            record_event(
                "tenant.provisioning.step_completed",
                tenant=run.tenant,
                run=run,
                details=_step_details(step, outcome="failed", error=str(error), best_effort=True),
            )
        else:
            run.failed_step = step.step_id
            run.error = str(error)
            run.error_category = error.category
            run.save(update_fields=["failed_step", "error", "error_category"])


def undo_waiting(lease: Lease, step: StepRun, error: StepError, delay: float, reason: str) -> None:
    """An undo that cannot reach the engine: note it on the step and park the run
    (compensating) until the next try; the undo resumes where it was, since
    every step already undone is recorded compensated."""
    with fenced(lease, during_cancel=True) as run:
        next_at = _wake_time(delay)
        step.error = f"undo waiting: {error}"
        step.progress = {"message": reason, "next_check_at": next_at.isoformat()}
        step.save(update_fields=["error", "progress", "memo"])
        _release_parked(run, next_at, reason)
        announce([f"tenant-{run.tenant_id}", "tenants"])


def step_progress(lease: Lease, step: StepRun, progress: dict) -> None:
    with fenced(lease) as run:
        StepRun.objects.filter(pk=step.pk).update(progress=progress)
        step.progress = progress
        announce([f"tenant-{run.tenant_id}", "tenants"])


def step_log(lease: Lease, step: StepRun, message: str, level: str = "info") -> None:
    with fenced(lease, during_cancel=True) as run:
        StepLogLine.objects.create(step=step, message=message[:4000], level=level)
        announce([f"tenant-{run.tenant_id}"])


def compensation_started(lease: Lease, *, cancelled: bool) -> None:
    with fenced(lease, during_cancel=True) as run:
        run.status = RunStatus.COMPENSATING
        run.cancelled = run.cancelled or cancelled
        if cancelled and not run.error:
            run.error = "Cancelled by operator"
            run.error_category = "cancelled"
        run.save(update_fields=["status", "cancelled", "error", "error_category"])
        announce(topics_for(run.tenant))


def step_compensating(lease: Lease, step: StepRun) -> None:
    with fenced(lease, during_cancel=True) as run:
        step.status = Status.COMPENSATING
        step.save(update_fields=["status"])
        announce([f"tenant-{run.tenant_id}", "tenants"])


def step_compensated(lease: Lease, step: StepRun, *, error: str = "") -> None:
    """Record an undo; with ``error`` the undo failed and the step stays compensating."""
    with fenced(lease, during_cancel=True) as run:
        if error:
            step.error = f"compensation failed: {error}"
            step.save(update_fields=["error"])
            announce([f"tenant-{run.tenant_id}"])
            return
        step.status = Status.COMPENSATED
        step.save(update_fields=["status"])
        record_event(
            "tenant.provisioning.compensated",
            tenant=run.tenant,
            run=run,
            details={"step": step.step_id, "position": step.position, "kind": run.kind},
        )


def run_succeeded(lease: Lease) -> None:
    with fenced(lease, during_cancel=True) as run:
        # An unexpected error the run recovered from stays on its step and in
        # the audit log; the run itself succeeded.
        run.error = ""
        run.error_category = ""
        run.save(update_fields=["error_category"])  # _finish saves the error
        _finish(run, RunStatus.SUCCEEDED)
        announce(topics_for(run.tenant))


def run_failed(lease: Lease) -> None:
    """After compensation: the run and the tenant end failed (or cancelled)."""
    with fenced(lease, during_cancel=True) as run:
        _finish(run, RunStatus.FAILED)
        tenant = run.tenant
        tenant.state = Tenant.State.FAILED
        tenant.save(update_fields=["state", "updated_at"])
        details = {
            "attempt": run.attempt,
            "failed_step": run.failed_step,
            "error": run.error,
            "category": run.error_category,
        }
        kind = "tenant.provisioning.cancelled" if run.cancelled else "tenant.provisioning.failed"
        record_event(kind, tenant=tenant, run=run, details=details)


def _step_on(run: ProvisioningRun) -> StepRun | None:
    """The step the run was busy with, or about to run, when it was interrupted."""
    return current_step(run, list(run.steps.order_by("position")))


def platform_error(lease: Lease, error: StepError) -> None:
    """Record an unexpected error of the engine itself, and let go of the lease.

    The error goes on the run (unless it is already undoing an earlier
    failure, whose error stays the reason), on the step it was on (with a
    log line) and in a ``step_retrying`` event: the run will be resumed at
    that step. The lease is released rather than left to expire, so the
    reaper's next pass resumes it (and the claim counts the resume).
    """
    with fenced(lease, during_cancel=True) as run:
        step = _step_on(run)
        if step is not None:
            if step.status == Status.RUNNING:
                step.status = Status.RETRYING
            step.error = str(error)
            step.error_category = error.category
            step.save(update_fields=["status", "error", "error_category"])
            StepLogLine.objects.create(step=step, message=str(error)[:4000], level="error")
        if run.status != RunStatus.COMPENSATING:
            run.error = str(error)
            run.error_category = error.category
            run.save(update_fields=["error", "error_category"])
        # The database's clock, as in claim: expired now for every host.
        ProvisioningRun.objects.filter(pk=run.pk).update(lease_owner="", lease_expires_at=Now())
        details = {"error": str(error), "category": error.category}
        details |= {"resumes": run.resumes, "max_resumes": settings.PROVISIONING_MAX_RESUMES}
        record_event(
            "tenant.provisioning.step_retrying",
            tenant=run.tenant,
            run=run,
            details=_step_details(step, **details) if step else details,
        )


def gave_up(lease: Lease) -> bool:
    """Past PROVISIONING_MAX_RESUMES: fail the step the run kept breaking on. Returns
    whether the run fails with it (and so compensates); a best-effort step fails
    alone, as it would from any error.

    The error is the last unexpected one, or, when only crashes interrupted
    the run, says so. A run already compensating keeps the failure it is
    undoing; one with no step left to give up on just finishes.
    """
    with transaction.atomic():
        with fenced(lease, during_cancel=True) as run:
            if run.status == RunStatus.COMPENSATING:
                return True
            step = _step_on(run)
            if step is None:
                return False
            text = run.error
            if run.error_category != "platform":
                where = f" while running {label_of(step.step_id)}"
                text = f"platform error: the worker stopped {run.resumes} times{where}"
        best_effort = step.step_id in BY_ID and BY_ID[step.step_id].best_effort
        step_failed(lease, step, PermanentError(text, category="platform"), best_effort=best_effort)
        return not best_effort


def run_abandoned(lease: Lease, error: StepError | None) -> None:
    """The last resort after the resume limit: the run ends failed, whatever is left undone.

    Used when giving up (compensation, or a decommission's last try) itself
    raised (``error``) or was interrupted (None: the error on record stays):
    nothing is retried again, so the reaper stops here; what is still there
    shows on the error card, and a decommission removes it.
    """
    with transaction.atomic(), fenced(lease, during_cancel=True) as run:
        step = _step_on(run)
        if error is not None:
            run.error = str(error)
        elif not run.error:
            run.error = f"platform error: the worker stopped {run.resumes} times"
        run.error_category = "platform"
        run.failed_step = run.failed_step or (step.step_id if step else "")
        run.save(update_fields=["failed_step", "error", "error_category"])
        # Nested in this transaction: the run never shows the error without its end.
        if run.kind == ProvisioningRun.Kind.DECOMMISSION:
            decommission_finished(lease, error=run.error)
        else:
            run_failed(lease)


def decommission_finished(lease: Lease, *, error: str = "") -> None:
    with fenced(lease, during_cancel=True) as run:
        tenant = run.tenant
        if error:
            run.error = error
            _finish(run, RunStatus.FAILED)
            announce(topics_for(tenant))
            return
        _finish(run, RunStatus.SUCCEEDED)
        now = timezone.now()
        tenant.state = Tenant.State.DECOMMISSIONED
        tenant.decommissioned_at = now
        tenant.save(update_fields=["state", "decommissioned_at", "updated_at"])
        record_event(
            "tenant.decommission.completed", tenant=tenant, run=run, details={"slug": tenant.slug}
        )


def _finish(run: ProvisioningRun, status: str) -> None:
    run.status = status
    run.finished_at = timezone.now()
    run.lease_owner = ""
    run.lease_expires_at = None
    run.wake_at, run.wait_reason = None, ""
    run.save(
        update_fields=[
            "status",
            "finished_at",
            "lease_owner",
            "lease_expires_at",
            "wake_at",
            "wait_reason",
            "error",
        ]
    )


def faults_used(lease: Lease, faults: list, *, unfenced: bool = False) -> None:
    """Record which injected faults were used. ``unfenced`` (a crash right after a
    record that may have ended the run, and its lease) writes by the run's id alone."""
    if unfenced:
        ProvisioningRun.objects.filter(pk=lease.run_id).update(faults=faults)
        return
    with fenced(lease, during_cancel=True) as run:
        run.faults = faults
        run.save(update_fields=["faults"])
