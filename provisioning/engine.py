"""The saga runner: order, retries, leases, parking and compensation.

``advance(run_id)`` takes the run's lease (or returns at once if another
worker holds it, or it is parked and not yet due, which is how a task that
the queue delivers twice stays harmless), runs the remaining steps in order
until the run ends or parks, and on failure or cancel undoes the started ones
in reverse. A heartbeat thread renews the lease while a step runs; if the
worker dies, the lease expires and the reaper enqueues the run again, which
resumes at the interrupted step.

A run parks when a step waits for something outside (``raise
ctx.check_again(...)``) or between the attempts of a step (the retry
backoff): the wait is recorded on the run (``wake_at``, ``wait_reason``), the
lease is let go, and the worker moves on. ``pump`` (what a django-q2 task
calls) continues its run and then every run that is due, and waits for the
next one to come due while any is parked; see docs/ARCHITECTURE.md, "The
runner".
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from provisioning import faults, ledger, stall
from provisioning.context import CheckAgain, RunState, StepContext
from provisioning.errors import Cancelled, Fenced, StepError, classify, platform_error
from provisioning.models import ProvisioningRun, StepRun
from provisioning.steps import STEPS, Step, step_at

log = logging.getLogger("provisioning.engine")
Status = StepRun.Status
# Steps whose undo is due: their compensation was registered when they started.
STARTED = (
    Status.RUNNING,
    Status.RETRYING,
    Status.SUCCEEDED,
    Status.FAILED,
    Status.COMPENSATING,
    Status.SKIPPED,
)
COMPENSATION_ATTEMPTS = 3
NOT_CLAIMED = "not claimed: finished, parked, or another worker holds the lease"


class StepMismatch(Exception):
    """The recorded step at a position is not the code's step there any more."""


def lease_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def backoff(attempt: int) -> float:
    """Exponential backoff with equal jitter: cap/2..cap, cap = base*2^(attempt-1), capped."""
    cap = min(
        settings.PROVISIONING_BACKOFF_MAX, settings.PROVISIONING_BACKOFF_BASE * 2 ** (attempt - 1)
    )
    return random.uniform(cap / 2, cap)


class Heartbeat(threading.Thread):
    """Renews the lease and notices cancel while the engine works."""

    def __init__(self, state: RunState):
        super().__init__(name=f"heartbeat-run-{state.lease.run_id}", daemon=True)
        self.state = state
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.wait(settings.PROVISIONING_HEARTBEAT_SECONDS):
                try:
                    sent = time.monotonic()
                    if ledger.heartbeat(self.state.lease, settings.PROVISIONING_LEASE_SECONDS):
                        self.state.cancel.set()
                    self.state.renewed(sent)
                except Fenced:
                    self.state.lost.set()
                    return
                except Exception:  # a blip; the next beat tries again before expiry
                    log.exception("heartbeat failed for run %s", self.state.lease.run_id)
                    close_old_connections()
                    continue
                self.check_stalls()
        finally:
            connection.close()  # this thread's own connection

    def check_stalls(self) -> None:
        """A step past its stall threshold gets one `stalled` event (see provisioning.stall)."""
        if self.state.cancel.is_set():
            return
        try:
            # Only the run this worker holds: pumps check the parked ones.
            stall.check_run(self.state.lease.run_id)
        except Exception:  # never let a diagnosis break the lease renewal
            log.exception("stall check failed for run %s", self.state.lease.run_id)
            close_old_connections()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def advance(run_id: int) -> str:
    """Advance a run until it ends or parks. Returns what happened, for the task result.

    An exception that escapes the steps' own handling (a bug, an invalid plan
    budget, a StepMismatch, a database that went away) is a platform error:
    recorded on the run and its step, the traceback in the worker's log, and
    the lease released so the reaper resumes the run. Each such resume counts
    (ledger.claim); past PROVISIONING_MAX_RESUMES the claim gives up instead
    (see _give_up), so a poison run ends failed rather than looping forever.
    """
    lease = ledger.claim(run_id, lease_owner(), settings.PROVISIONING_LEASE_SECONDS)
    if lease is None:
        return NOT_CLAIMED
    return _advance_claimed(lease)


def _advance_claimed(lease: ledger.Lease) -> str:
    run_id = lease.run_id
    if lease.late_s is not None:
        log.debug("run %s: claimed %.0f ms after it was due", run_id, lease.late_s * 1000)
    over = lease.resumes - settings.PROVISIONING_MAX_RESUMES
    state = RunState(lease)
    beat = Heartbeat(state)
    beat.start()
    try:
        run, steps = _load(run_id)
        if over > 1:
            # Giving up was itself interrupted (a crash while undoing): stop here.
            return _record_platform_error(lease, None, final=True)
        if over == 1:
            return _give_up(state, run)
        if run.kind == ProvisioningRun.Kind.DECOMMISSION:
            return _decommission(state, run, steps)
        return _provision(state, run, steps)
    except Fenced as exc:
        log.info("run %s: stopped, %s", run_id, exc)
        return f"fenced: {exc}"
    except Exception as exc:
        error = platform_error(exc)
        log.exception("run %s: %s (resume %s)", run_id, error, lease.resumes)
        return _record_platform_error(lease, error, final=over >= 1)
    finally:
        beat.stop()


def _record_platform_error(lease: ledger.Lease, error: StepError | None, *, final: bool) -> str:
    """Put the platform error on record: the run is resumed later, or (``final``) ends failed.

    ``error`` None (final only) keeps the error already on the run.
    """
    if connection.errors_occurred and not connection.is_usable():
        connection.close()  # the error was the connection dying; the next query reconnects
    try:
        if final:
            ledger.run_abandoned(lease, error)
            return f"failed: {error or 'gave up after the resume limit'}"
        ledger.platform_error(lease, error)
    except Fenced as exc:
        log.info("run %s: stopped, %s", lease.run_id, exc)
        return f"fenced: {exc}"
    except Exception:
        # Nothing could be written (the database is away?): the lease expires
        # on its own and the reaper resumes the run, which counts the resume.
        log.exception("run %s: could not record the platform error", lease.run_id)
    return f"resumable: {error}"


def _give_up(state: RunState, run: ProvisioningRun) -> str:
    """Past the resume limit: fail and compensate like any failure, once.

    If this raises too, advance's handler abandons the run (final), so the
    run is terminal either way and the reaper stops resuming it.
    """
    log.warning("run %s: resumed %s times; giving up", run.pk, state.lease.resumes)
    if run.kind == ProvisioningRun.Kind.DECOMMISSION:
        return _decommission(state, run)  # one last try: a decommission undoes everything
    if ledger.gave_up(state.lease):
        return _compensate_and_fail(state, run, _steps_of(run), cancelled=False)
    # A best-effort step was given up (the tenant does not fail for it), or
    # every step was done: finish the run.
    return _provision(state, run)


def _load(run_id: int) -> tuple[ProvisioningRun, list[StepRun]]:
    """The run with its tenant, plan and creator, and its steps: one query."""
    steps = list(
        StepRun.objects.filter(run_id=run_id)
        .select_related("run__tenant__plan", "run__created_by")
        .order_by("position")
    )
    if not steps:
        run = ProvisioningRun.objects.select_related("tenant__plan", "created_by").get(pk=run_id)
        return run, []
    run = steps[0].run
    for step_run in steps:
        step_run.run = run
    return run, _checked(run, steps)


def _steps_of(run: ProvisioningRun) -> list[StepRun]:
    return _checked(run, list(run.steps.order_by("position")))


def _checked(run: ProvisioningRun, steps: list[StepRun]) -> list[StepRun]:
    """``steps`` as recorded, once each is the code's step at its position."""
    for step_run in steps:
        if step_at(step_run.position).id != step_run.step_id:
            raise StepMismatch(
                f"run {run.pk} records {step_run.step_id!r} at position {step_run.position}, "
                f"but the saga now has {step_at(step_run.position).id!r} there"
            )
    return steps


def _to_run(steps: list[StepRun]) -> list[tuple[StepRun, Step]]:
    """The steps a provisioning run still has to run, in order."""
    return [
        (step_run, step)
        for step_run, step in zip(steps, STEPS, strict=True)
        if step_run.status not in (Status.SUCCEEDED, Status.SKIPPED)
        and not (step_run.status == Status.FAILED and step.best_effort)
    ]


def _provision(state: RunState, run: ProvisioningRun, steps: list[StepRun] | None = None) -> str:
    """Run the remaining steps in order. Each transition is one commit: a step's
    success, the next step's start (or the run's end) and their events together
    (ledger.step_succeeded), so a saga of N steps costs about N writes."""
    lease = state.lease
    steps = _steps_of(run) if steps is None else steps
    if run.status == ProvisioningRun.Status.COMPENSATING:
        ledger.run_started(lease, run)
        return _compensate_and_fail(state, run, steps, cancelled=run.cancelled)
    todo = _to_run(steps)
    try:
        first = todo[0][0] if todo and _needs_start(lease, todo[0][0]) else None
        ledger.run_started(lease, run, then_start=first)
    except Cancelled:
        ledger.run_started(lease, run)
        return _compensate_and_fail(state, run, steps, cancelled=True)
    for n, (step_run, step) in enumerate(todo):
        following = todo[n + 1][0] if n + 1 < len(todo) else None
        try:
            state.check()
            outcome = _run_step(state, run, step_run, step, following)
        except Cancelled:
            return _compensate_and_fail(state, run, steps, cancelled=True)
        if outcome == "failed":
            return _compensate_and_fail(state, run, steps, cancelled=False)
        if outcome == "parked":
            return "parked"
        if outcome == "finished":
            return "succeeded"
    ledger.run_succeeded(lease)
    return "succeeded"


def _needs_start(lease: ledger.Lease, step_run: StepRun) -> bool:
    """Whether a call of this step starts an attempt. Not for a step that is
    ``running`` in a run this claim found parked: it goes on with its next check."""
    return not (lease.parked and step_run.status == Status.RUNNING)


def _run_step(
    state: RunState,
    run: ProvisioningRun,
    step_run: StepRun,
    step: Step,
    following: StepRun | None,
) -> str:
    """One call of a step, already started (an attempt is on record): 'succeeded',
    'finished' (it was the last and the run succeeded with it), 'failed' or
    'parked' (a wait, or a retry's backoff).

    On success the same commit starts ``following``, the next step (or ends
    the run when there is none), unless the step has an ``on_success`` of its
    own, which needs a transaction of its own.
    """
    lease = state.lease
    max_attempts, seconds = state.budget(step, run.tenant.plan)
    ctx = StepContext(state, run, step_run, seconds)
    try:
        faults.apply(ctx, step.id, step_run.attempts)
        faults.crash_point(ctx, "before_effect")
        with connection.execute_wrapper(state.sql_guard):
            outputs = step.run(ctx) or {}
        faults.crash_point(ctx, "after_effect")
        state.check()  # a cancel that arrived during the step wins over its result
    except CheckAgain as wait:
        state.check()  # and over its wait (park also refuses once a cancel is recorded)
        ledger.park(
            lease, step_run, seconds=wait.seconds, progress=wait.progress, reason=wait.reason
        )
        return "parked"
    except (Cancelled, Fenced):
        raise
    except Exception as exc:
        error = classify(exc)
        log.info("run %s step %s attempt %s: %s", run.pk, step.id, step_run.attempts, error)
        if error.outage and (wait := _retry_outage(step_run)):
            delay, reason = wait
            ledger.step_retrying(lease, step_run, error, delay, reason=reason)
            return "parked"
        # Another error, or an outage past its time: a later outage starts its own clock.
        step_run.memo.pop(ledger.OUTAGE_SINCE, None)
        if error.transient and step_run.attempts < max_attempts:
            # The backoff is a park too: no worker waits it out.
            ledger.step_retrying(lease, step_run, error, backoff(step_run.attempts))
            return "parked"
        ledger.step_failed(lease, step_run, error, best_effort=step.best_effort)
        if not step.best_effort:
            return "failed"
    else:
        if not step.has_on_success:
            ledger.step_succeeded(
                lease, step_run, outputs, then_start=following, then_finish=following is None
            )
            faults.crash_point(ctx, "after_record")
            return "succeeded" if following is not None else "finished"
        ledger.step_succeeded(
            lease, step_run, outputs, on_success=partial(step.on_success, ctx, outputs)
        )
        faults.crash_point(ctx, "after_record")
    # A best-effort failure, or a success with code of its own: the next step
    # starts in a commit of its own.
    if following is not None:
        ledger.step_started(lease, following)
    return "succeeded"


# How often a step, or an undo, tries again while the container engine is away.
OUTAGE_RETRY_SECONDS = 5.0
# An undo's outage clock, apart from the step's own (the memo keeps both).
UNDO_OUTAGE_SINCE = "undo_outage_since"


def _retry_outage(step_run: StepRun, key: str = ledger.OUTAGE_SINCE) -> tuple[float, str] | None:
    """An engine outage is retried for WORKLOAD_ENGINE_OUTAGE_SECONDS from when it
    began (kept in the step's memo, across attempts), not for the step's
    attempts: an engine restart outlasts a backoff. Returns (seconds until
    the next try, what the run waits for), or None once the time is up."""
    now = timezone.now()
    since = step_run.memo.setdefault(key, now.isoformat())
    until = datetime.fromisoformat(since) + timedelta(
        seconds=settings.WORKLOAD_ENGINE_OUTAGE_SECONDS
    )
    if now >= until:
        return None
    delay = min(OUTAGE_RETRY_SECONDS, (until - now).total_seconds())
    return delay, f"Docker Engine unreachable, retrying until {timezone.localtime(until):%H:%M:%S}"


class UndoParked(Exception):  # noqa: N818 - not an error: the undo waits for the engine
    """An undo parked the run until the container engine answers again."""


def _compensate_and_fail(state, run, steps, *, cancelled: bool) -> str:
    lease = state.lease
    ledger.compensation_started(lease, cancelled=cancelled)
    for step_run in reversed(steps):
        step_run.refresh_from_db()
        if step_run.status not in STARTED:
            continue
        try:
            _compensate_step(state, run, step_run, step_at(step_run.position))
        except UndoParked:
            return "parked"
    ledger.run_failed(lease)
    return "cancelled" if cancelled else "failed"


def _compensate_step(state: RunState, run, step_run: StepRun, step: Step) -> bool:
    """Undo one step, retrying a few times; a cancel does not stop an undo.

    The backoff between undo attempts stays a short wait in the worker (3
    attempts, at most 2 waits of PROVISIONING_BACKOFF_MAX). An engine outage
    parks the run instead (UndoParked), for up to WORKLOAD_ENGINE_OUTAGE_SECONDS:
    the statuses are the undo's cursor (what is undone is recorded
    compensated), so the next claim resumes at this step.
    """
    lease = state.lease
    ledger.step_compensating(lease, step_run)
    # Undo must not depend on a plan budget the engine refused: defaults then.
    ctx = StepContext(state, run, step_run, step.budget(run.tenant.plan, strict=False)[1])
    last_error = ""
    for attempt in range(1, COMPENSATION_ATTEMPTS + 1):
        if state.lost.is_set():
            raise Fenced("lease lost during compensation")
        try:
            faults.crash_point(ctx, "before_effect")
            with connection.execute_wrapper(state.sql_guard):
                step.compensate(ctx)
            faults.crash_point(ctx, "after_effect")
        except Exception as exc:
            error = classify(exc)
            if error.outage and (wait := _retry_outage(step_run, UNDO_OUTAGE_SINCE)):
                # Parked, not slept through: the undo resumes at this step.
                delay, reason = wait
                log.warning("run %s: undo of %s waits: %s", run.pk, step.id, error)
                ledger.undo_waiting(lease, step_run, error, delay, reason)
                raise UndoParked() from exc
            last_error = str(error)
            log.warning("run %s: undo of %s failed (%s): %s", run.pk, step.id, attempt, last_error)
            ctx.log(f"undo attempt {attempt} failed: {last_error}", "error")
            if attempt < COMPENSATION_ATTEMPTS:
                threading.Event().wait(backoff(attempt))
            continue
        ledger.step_compensated(lease, step_run)
        faults.crash_point(ctx, "after_record")
        return True
    ledger.step_compensated(lease, step_run, error=last_error)
    return False


def _decommission(state: RunState, run: ProvisioningRun, steps: list[StepRun] | None = None) -> str:
    """Undo every step of the saga, whatever earlier runs recorded."""
    lease = state.lease
    ledger.run_started(lease, run)
    steps = _steps_of(run) if steps is None else steps
    failures = []
    for step_run in reversed(steps):
        if step_run.status == Status.COMPENSATED:
            continue
        try:
            if not _compensate_step(state, run, step_run, step_at(step_run.position)):
                failures.append(step_run.step_id)
        except UndoParked:
            return "parked"
    if failures:
        ledger.decommission_finished(
            lease, error=f"could not remove what {', '.join(failures)} made; decommission again"
        )
        return "failed"
    ledger.decommission_finished(lease)
    return "decommissioned"


# ---------------------------------------------------------------- the pump

# The session advisory lock that makes one pump, among all workers, the one
# that waits for the next parked run to come due; the others return.
WAITER_LOCK = 0x70_726F_7669_7369  # "provisi", any constant the database shares
# A waiter that goes to work asks for a successor at most this often.
SUCCESSOR_SECONDS = 1.0
_last_stall_check = 0.0
_last_successor = 0.0


def pump_seconds() -> float:
    """How long one task may go on pumping: well inside django-q2's timeout."""
    return min(settings.PROVISIONING_PUMP_SECONDS, settings.Q_CLUSTER["timeout"] / 2)


# The qcluster a worker belongs to (provisioning's qcluster command sets it
# before its workers fork), and the channel on which a stopping cluster says so.
CLUSTER_ENV = "CONSOLE_QCLUSTER"
STOP_CHANNEL = "console_pump"


# Set by this qcluster's signal handler, seen by every worker it forked:
# made before the cluster starts, with django-q2's "fork" start method.
_stopping = None


def mark_cluster() -> str:
    """Name this qcluster (host and pid) for the workers it is about to fork,
    and make the flag that tells them all that it stops."""
    global _stopping
    token = f"{socket.gethostname()}:{os.getpid()}"
    os.environ[CLUSTER_ENV] = token
    _stopping = multiprocessing.get_context("fork").Event()
    return token


def cluster_stopping() -> bool:
    """Whether this worker's qcluster is stopping (its flag; False outside one)."""
    return _stopping is not None and _stopping.is_set()


def announce_stop() -> None:
    """Tell this cluster's pumps that the cluster is stopping: the flag every worker
    sees (a pump that starts waiting later), and a notification on STOP_CHANNEL that
    wakes the one waiting now."""
    if _stopping is not None:
        _stopping.set()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_notify(%s, %s)",
            [STOP_CHANNEL, json.dumps({"stop": os.environ.get(CLUSTER_ENV, "")})],
        )


def listening() -> bool:
    """Whether a pump waits for new runs even when none is parked.

    Then a new run (its create announces itself) is claimed within
    milliseconds instead of after the queue's poll and hand-off. The waiting
    holds one worker, so only with two or more: with one, the waiter would keep
    every other task (schedules, actions) waiting.
    """
    return settings.Q_CLUSTER["workers"] >= 2 and not settings.Q_CLUSTER.get("sync")


def waiter_listening() -> bool:
    """Whether a pump holds the waiter's role in this database right now.

    A run created while one does needs no task of its own: its create's
    notification wakes that pump, which claims it within milliseconds. (If
    the waiter dies in between, the reaper enqueues the run after
    reaper.UNCLAIMED_GRACE, and a respawned worker enqueues a pump at once.)
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT EXISTS (
                SELECT 1 FROM pg_locks
                 WHERE locktype = 'advisory' AND granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND classid = %s AND objid = %s AND objsubid = 1)
            """,
            [WAITER_LOCK >> 32, WAITER_LOCK & 0xFFFFFFFF],
        )
        return cursor.fetchone()[0]


class Waiter:
    """A pump's listening connection; the pump holding WAITER_LOCK on it is the waiter.

    Its own connection (autocommit), so the lock lasts exactly as long as
    the pump holds it, and is gone with the connection if its worker dies.
    Every state change that can make a run due (a create, a cancel, a retry,
    a park) is announced on the ``console`` channel inside its transaction,
    so a notification wakes the waiter as soon as it commits. Its cluster's
    stop is announced on STOP_CHANNEL.
    """

    def __init__(self):
        import psycopg

        from provisioning.audit import CHANNEL
        from provisioning.pgconn import conninfo

        self.conn = psycopg.connect(**{**conninfo(), "application_name": "tenant-console-pump"})
        self.held = False
        self.stopping = False
        self.cluster = os.environ.get(CLUSTER_ENV)
        try:
            # LISTEN before the pump's next look for due runs: a change
            # committed after that look is a notification, never lost.
            self.conn.execute(f"LISTEN {CHANNEL}")
            self.conn.execute(f"LISTEN {STOP_CHANNEL}")
        except Exception:
            self.conn.close()
            raise

    def try_hold(self) -> bool:
        """Become the waiter, unless another pump is."""
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", [WAITER_LOCK]).fetchone()
        self.held = bool(row[0])
        return self.held

    def release(self) -> None:
        if self.held:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", [WAITER_LOCK])
            self.held = False

    def wait(self, seconds: float) -> bool:
        """Until a notification or ``seconds``; True if notified. Drains what piled up,
        and notes a stop of this pump's own cluster (``stopping``)."""
        woken = False
        for notify in self.conn.notifies(timeout=max(0.0, seconds), stop_after=1):
            woken = True
            self._note(notify)
        for notify in self.conn.notifies(timeout=0):
            self._note(notify)
        return woken

    def _note(self, notify) -> None:
        if notify.channel != STOP_CHANNEL or not self.cluster:
            return
        with contextlib.suppress(ValueError, AttributeError):
            self.stopping |= json.loads(notify.payload).get("stop") == self.cluster

    def close(self) -> None:
        self.conn.close()  # ends the LISTEN and frees the lock


def _check_parked_stalls() -> None:
    """Stall checks for runs no worker holds (parked), every PROVISIONING_HEARTBEAT_SECONDS.

    The heartbeat of the worker holding a run checks that run; this covers
    the rest, so every live run is checked by one party at a time.
    """
    global _last_stall_check
    now = time.monotonic()
    if now - _last_stall_check < settings.PROVISIONING_HEARTBEAT_SECONDS:
        return
    _last_stall_check = now
    try:
        stall.check_parked()
    except Exception:  # a diagnosis never stops the pump
        log.exception("stall check of parked runs failed")
        close_old_connections()


def _ask_for_successor() -> None:
    """Enqueue a pump to take over the waiting while this one works (rate-limited).

    A free worker picks it up and becomes the waiter; when this pump is done
    it finds the role taken and returns. With every worker busy the task
    waits in the queue, and whichever pump is free first waits instead.
    """
    global _last_successor
    now = time.monotonic()
    if now - _last_successor < SUCCESSOR_SECONDS:
        return
    if not listening() and ledger.next_wake() is None:
        return
    _last_successor = now
    from provisioning.queue import enqueue_pump

    enqueue_pump()


def _summary(outcomes: Counter) -> str:
    if not outcomes:
        return NOT_CLAIMED
    return ", ".join(f"{outcome} {count}" for outcome, count in outcomes.most_common())


def _kind(outcome: str) -> str:
    return outcome.split(":", 1)[0]


def pump(run_id: int | None = None) -> str:
    """What a task does: advance ``run_id``, then every due run, while runs are parked.

    One task advances every due run it can claim (queued and unclaimed,
    parked and due, parked with a cancel waiting), each until it parks or
    ends. When nothing is due but runs are parked (or always, when
    ``listening()``), one pump (the Waiter) waits for the earliest to come
    due, or for a notification (a new run, a cancel), and goes on; any other
    pump returns, freeing its worker. When
    the waiter goes to work on a due run it gives the role up and asks for a
    successor task, so a free worker waits meanwhile. A pump
    stops after ``pump_seconds()`` and enqueues its successor, so it stays
    inside django-q2's timeout and schedules get a worker. Returns what it
    did, e.g. "succeeded 1, parked 3".
    """
    outcomes: Counter = Counter()
    if run_id is not None:
        outcome = advance(run_id)
        if outcome != NOT_CLAIMED:
            outcomes[_kind(outcome)] += 1
    if settings.Q_CLUSTER.get("sync"):
        # Inline (Q_SYNC): the caller is a request or a command; never wait in it.
        return _summary(outcomes) if outcomes else NOT_CLAIMED
    ttl = settings.PROVISIONING_LEASE_SECONDS
    deadline = time.monotonic() + pump_seconds()
    listen = listening()
    waiter: Waiter | None = None
    handover = False
    try:
        while True:
            _check_parked_stalls()
            lease = ledger.claim_due(lease_owner(), ttl)
            if lease is not None:
                if waiter is not None and waiter.held:
                    # Going to work: let another pump wait meanwhile, so a run
                    # that comes due during this one's steps is not late.
                    waiter.release()
                    _ask_for_successor()
                outcomes[_kind(_advance_claimed(lease))] += 1
                if time.monotonic() >= deadline:
                    handover = True
                    break
                continue
            wait = ledger.next_wake()
            if wait is None and not listen:
                break  # nothing parked, and not listening: nothing to wait for
            if time.monotonic() >= deadline:
                handover = True
                break
            if cluster_stopping():
                # Heard by the workers of a stopping cluster that were busy when
                # it said so (the notification only wakes the pump waiting then).
                handover = True
                break
            if waiter is None:
                waiter = Waiter()
            if not waiter.held:
                if not waiter.try_hold():
                    break  # another pump is the waiter
                continue  # look again: what came due meanwhile is claimed first
            # A floor, so a due run that is briefly locked (an operator's
            # action on it) is not polled in a tight loop.
            ceiling = settings.PROVISIONING_HEARTBEAT_SECONDS
            waiter.wait(
                max(
                    0.002,
                    min(ceiling if wait is None else wait, ceiling, deadline - time.monotonic()),
                )
            )
            if waiter.stopping:
                # Its cluster is stopping: free the worker now; a pump of
                # another cluster (or of the next one) takes over the waiting.
                handover = True
                break
    finally:
        if waiter is not None:
            waiter.close()
    if handover:
        from provisioning.queue import enqueue_pump

        log.info("pump: its time is up or its cluster stops; handing over to a new task")
        enqueue_pump()
    return _summary(outcomes)
