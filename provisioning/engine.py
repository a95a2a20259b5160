"""The saga runner: order, retries, leases and compensation.

``advance(run_id)`` is what a django-q2 task calls. It takes the run's lease
(or returns at once if another worker holds it, which is how a task that the
queue delivers twice stays harmless), runs the remaining steps in order, and
on failure or cancel undoes the started ones in reverse. A heartbeat thread
renews the lease; if the worker dies, the lease expires and the reaper
enqueues the run again, which resumes at the interrupted step.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from provisioning import faults, ledger, stall
from provisioning.context import RunState, StepContext
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
                    if ledger.heartbeat(self.state.lease, settings.PROVISIONING_LEASE_SECONDS):
                        self.state.cancel.set()
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
            stall.check_run(self.state.lease)
        except Exception:  # never let a diagnosis break the lease renewal
            log.exception("stall check failed for run %s", self.state.lease.run_id)
            close_old_connections()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def advance(run_id: int) -> str:
    """Advance a run as far as it goes. Returns what happened, for the task result.

    An exception that escapes the steps' own handling (a bug, an invalid plan
    budget, a StepMismatch, a database that went away) is a platform error:
    recorded on the run and its step, the traceback in the worker's log, and
    the lease released so the reaper resumes the run. Each such resume counts
    (ledger.claim); past PROVISIONING_MAX_RESUMES the claim gives up instead
    (see _give_up), so a poison run ends failed rather than looping forever.
    """
    lease = ledger.claim(run_id, lease_owner(), settings.PROVISIONING_LEASE_SECONDS)
    if lease is None:
        return "not claimed: finished, or another worker holds the lease"
    over = lease.resumes - settings.PROVISIONING_MAX_RESUMES
    state = RunState(lease)
    beat = Heartbeat(state)
    beat.start()
    try:
        run = ProvisioningRun.objects.select_related("tenant", "tenant__plan", "created_by").get(
            pk=run_id
        )
        if over > 1:
            # Giving up was itself interrupted (a crash while undoing): stop here.
            return _record_platform_error(lease, None, final=True)
        if over == 1:
            return _give_up(state, run)
        if run.kind == ProvisioningRun.Kind.DECOMMISSION:
            return _decommission(state, run)
        return _provision(state, run)
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


def _steps_of(run: ProvisioningRun) -> list[StepRun]:
    steps = list(run.steps.order_by("position"))
    for step_run in steps:
        if step_at(step_run.position).id != step_run.step_id:
            raise StepMismatch(
                f"run {run.pk} records {step_run.step_id!r} at position {step_run.position}, "
                f"but the saga now has {step_at(step_run.position).id!r} there"
            )
    return steps


def _provision(state: RunState, run: ProvisioningRun) -> str:
    lease = state.lease
    ledger.run_started(lease)
    steps = _steps_of(run)
    if run.status == ProvisioningRun.Status.COMPENSATING:
        return _compensate_and_fail(state, run, steps, cancelled=run.cancelled)
    for step_run, step in zip(steps, STEPS, strict=True):
        if step_run.status in (Status.SUCCEEDED, Status.SKIPPED):
            continue
        if step_run.status == Status.FAILED and step.best_effort:
            continue
        try:
            state.check()
            outcome = _run_step(state, run, step_run, step)
        except Cancelled:
            return _compensate_and_fail(state, run, steps, cancelled=True)
        if outcome == "failed":
            return _compensate_and_fail(state, run, steps, cancelled=False)
    ledger.run_succeeded(lease)
    return "succeeded"


def _run_step(state: RunState, run: ProvisioningRun, step_run: StepRun, step: Step) -> str:
    """Run one step with retries. Returns 'succeeded', 'failed' or raises Cancelled."""
    lease = state.lease
    max_attempts, seconds = step.budget(run.tenant.plan)
    while True:
        ledger.step_started(lease, step_run)
        ctx = StepContext(state, run, step_run, seconds)
        try:
            faults.apply(ctx, step.id, step_run.attempts)
            outputs = step.run(ctx) or {}
            state.check()  # a cancel that arrived during the step wins over its result
        except (Cancelled, Fenced):
            raise
        except Exception as exc:
            error = classify(exc)
            log.info("run %s step %s attempt %s: %s", run.pk, step.id, step_run.attempts, error)
            if error.transient and step_run.attempts < max_attempts:
                delay = backoff(step_run.attempts)
                next_at = timezone.now() + timedelta(seconds=delay)
                ledger.step_retrying(lease, step_run, error, next_at)
                ctx.sleep(delay)
                continue
            ledger.step_failed(lease, step_run, error, best_effort=step.best_effort)
            return "succeeded" if step.best_effort else "failed"
        ledger.step_succeeded(
            lease, step_run, outputs, on_success=partial(step.on_success, ctx, outputs)
        )
        return "succeeded"


def _compensate_and_fail(state, run, steps, *, cancelled: bool) -> str:
    lease = state.lease
    ledger.compensation_started(lease, cancelled=cancelled)
    for step_run in reversed(steps):
        step_run.refresh_from_db()
        if step_run.status not in STARTED:
            continue
        _compensate_step(state, run, step_run, step_at(step_run.position))
    ledger.run_failed(lease)
    return "cancelled" if cancelled else "failed"


def _compensate_step(state: RunState, run, step_run: StepRun, step: Step) -> bool:
    """Undo one step, retrying a few times; a cancel does not stop an undo."""
    lease = state.lease
    ledger.step_compensating(lease, step_run)
    # Undo must not depend on a plan budget the engine refused: defaults then.
    ctx = StepContext(state, run, step_run, step.budget(run.tenant.plan, strict=False)[1])
    last_error = ""
    for attempt in range(1, COMPENSATION_ATTEMPTS + 1):
        if state.lost.is_set():
            raise Fenced("lease lost during compensation")
        try:
            step.compensate(ctx)
        except Exception as exc:
            last_error = str(classify(exc))
            log.warning("run %s: undo of %s failed (%s): %s", run.pk, step.id, attempt, last_error)
            ctx.log(f"undo attempt {attempt} failed: {last_error}", "error")
            if attempt < COMPENSATION_ATTEMPTS:
                threading.Event().wait(backoff(attempt))
            continue
        ledger.step_compensated(lease, step_run)
        return True
    ledger.step_compensated(lease, step_run, error=last_error)
    return False


def _decommission(state: RunState, run: ProvisioningRun) -> str:
    """Undo every step of the saga, whatever earlier runs recorded."""
    lease = state.lease
    ledger.run_started(lease)
    steps = _steps_of(run)
    failures = []
    for step_run in reversed(steps):
        if step_run.status == Status.COMPENSATED:
            continue
        if not _compensate_step(state, run, step_run, step_at(step_run.position)):
            failures.append(step_run.step_id)
    if failures:
        ledger.decommission_finished(
            lease, error=f"could not remove what {', '.join(failures)} made; decommission again"
        )
        return "failed"
    ledger.decommission_finished(lease)
    return "decommissioned"
