"""What a step sees of the run: the tenant, the driver, and fenced ways to report and wait."""

from __future__ import annotations

import threading
import time
from functools import cached_property

from django.conf import settings
from django.utils import timezone

from provisioning import ledger
from provisioning.errors import Cancelled, Fenced
from provisioning.models import ProvisioningRun, StepRun

CANCEL_POLL_SECONDS = 0.25


class CheckAgain(Exception):  # noqa: N818 - not an error: the step's way to say "later"
    """Raised by a step (``raise ctx.check_again(...)``) that must wait for something outside.

    The engine parks the run: it records the progress with the time of the
    next check, lets go of the lease, and the worker moves on. When the time
    comes, any worker calls the step's ``run`` again, which makes its next
    check. Whatever the step needs between checks lives in ``ctx.memo``.
    """

    def __init__(self, seconds: float, progress: dict, reason: str):
        super().__init__(reason)
        self.seconds = max(0.0, float(seconds))
        self.progress = progress
        self.reason = reason


def progress_dict(message: str, fraction: float | None = None, replicas=None) -> dict:
    progress = {"message": message}
    if fraction is not None:
        progress["fraction"] = round(max(0.0, min(1.0, fraction)), 3)
    if replicas is not None:
        progress["replicas"] = replicas
    return progress


class RunState:
    """Shared between the engine and its heartbeat thread."""

    def __init__(self, lease: ledger.Lease):
        self.lease = lease
        self.cancel = threading.Event()
        self.lost = threading.Event()
        # The claim read the cancel flag: the next read is due a poll later.
        self._last_cancel_check = time.monotonic()
        if lease.cancel:
            self.cancel.set()
        # Until when this worker may believe it holds the lease without asking:
        # the claim's or the last renewal's time plus the lease's length,
        # measured on this process's monotonic clock (started before the
        # claim's statement, so it errs early).
        self.valid_until = (lease.sent_at or time.monotonic()) + settings.PROVISIONING_LEASE_SECONDS
        self._budgets: dict[str, tuple[int, float]] = {}

    def renewed(self, at: float) -> None:
        """The lease was renewed by a statement sent at monotonic time ``at``."""
        self.valid_until = max(self.valid_until, at + settings.PROVISIONING_LEASE_SECONDS)

    def check_lease(self) -> None:
        """Fenced, without asking the database, once the lease may have been lost: the
        heartbeat said so, or nothing renewed it for a whole lease (the database
        was out of reach, or this process was stopped); another worker may hold
        it by now."""
        if self.lost.is_set():
            raise Fenced(f"run {self.lease.run_id}: lease lost")
        if time.monotonic() > self.valid_until:
            self.lost.set()
            raise Fenced(f"run {self.lease.run_id}: lease expired (not renewed in time)")

    def touch(self) -> None:
        """Before an effect on the outside world: renew the lease in a durable commit.

        Proves the lease is still ours (else Fenced) and flushes every lazy
        commit before it, the step's "running" among them (ledger, "Lazy
        durability"). A cancel it finds is noted, not raised: an undo must go on.
        """
        self.check_lease()
        sent = time.monotonic()
        if ledger.heartbeat(self.lease, settings.PROVISIONING_LEASE_SECONDS):
            self.cancel.set()
        self.renewed(sent)

    def sql_guard(self, execute, sql, params, many, context):
        """A connection.execute_wrapper: no SQL from a worker that may have lost its lease."""
        self.check_lease()
        return execute(sql, params, many, context)

    def budget(self, step, plan) -> tuple[int, float]:
        """``step.budget(plan)`` (strict), worked out once per claim of the run."""
        if step.id not in self._budgets:
            self._budgets[step.id] = step.budget(plan)
        return self._budgets[step.id]

    def check(self) -> None:
        self.check_lease()
        now = time.monotonic()
        # A cheap read a few times a second keeps cancel prompt inside long waits.
        if not self.cancel.is_set() and now - self._last_cancel_check >= CANCEL_POLL_SECONDS:
            self._last_cancel_check = now
            if ledger.cancel_requested(self.lease):
                self.cancel.set()
        if self.cancel.is_set():
            raise Cancelled()


class VerifyContext:
    """What ``Step.verify`` may read outside a running step: the tenant, its plan, a driver."""

    def __init__(self, run: ProvisioningRun):
        self.run = run
        self.tenant = run.tenant
        self.plan = run.tenant.plan

    @cached_property
    def driver(self):
        from provisioning.drivers import driver_for

        return driver_for(self.tenant)


class GuardedDriver:
    """The workload driver as a step sees it: every call is preceded by the run's
    ``touch`` (a fenced, durable lease renewal), so a worker that lost its lease
    stops before its next Docker call, and the step's start is on disk first."""

    def __init__(self, driver, state: RunState):
        self._driver = driver
        self._state = state

    def __getattr__(self, name):
        attribute = getattr(self._driver, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def guarded(*args, **kwargs):
            self._state.touch()
            return attribute(*args, **kwargs)

        return guarded


class StepContext(VerifyContext):
    """What a running step sees: a VerifyContext plus the fenced ways to report and wait.

    A step that waits for something outside makes one check per call and
    ends it with ``raise ctx.check_again(seconds, message=...)``; it never
    sleeps. Its clock (``elapsed``, ``time_left``) runs from the attempt's
    recorded start, so the budget holds across the parks between checks, and
    ``memo`` (saved with each park, cleared when an attempt starts) carries
    what it learned from one check to the next.
    """

    def __init__(self, state: RunState, run: ProvisioningRun, step_run: StepRun, seconds: float):
        super().__init__(run)
        self.state = state
        self.lease = state.lease
        self.step_run = step_run
        self.seconds = seconds
        if step_run.memo is None:
            step_run.memo = {}
        self.memo: dict = step_run.memo
        self._last_progress: dict | None = None

    @cached_property
    def driver(self):
        return GuardedDriver(VerifyContext.driver.func(self), self.state)

    def before_effect(self) -> None:
        """Call before an effect outside the database that is not a driver call (a
        file, an email): the same guard as every driver call."""
        self.state.touch()

    def log(self, message: str, level: str = "info") -> None:
        ledger.step_log(self.lease, self.step_run, message, level)

    def progress(self, message: str, fraction: float | None = None, replicas=None) -> None:
        progress = progress_dict(message, fraction, replicas)
        if progress != self._last_progress:  # only changes are written and pushed
            self._last_progress = progress
            ledger.step_progress(self.lease, self.step_run, progress)

    def check_again(
        self,
        seconds: float,
        *,
        message: str,
        fraction: float | None = None,
        replicas=None,
        reason: str = "",
    ) -> CheckAgain:
        """The step's wait: park the run and call the step again in ``seconds``.

        ``message`` (with ``fraction`` and ``replicas``) is the step's progress
        while it waits; ``reason`` (default: the message) is what the run is
        waiting for, as `tenant_status` shows it. Use as ``raise ctx.check_again(...)``.
        """
        return CheckAgain(seconds, progress_dict(message, fraction, replicas), reason or message)

    def check_cancel(self) -> None:
        self.state.check()

    def _attempt_started(self):
        return self.step_run.attempt_started_at or self.step_run.started_at or timezone.now()

    def elapsed(self) -> float:
        """Seconds since this attempt started, parks included."""
        return max(0.0, (timezone.now() - self._attempt_started()).total_seconds())

    def time_left(self) -> float:
        """Seconds left of this attempt's budget (plus what extend_deadline added)."""
        return self.seconds + float(self.memo.get("extra_seconds", 0)) - self.elapsed()

    def extend_deadline(self, seconds: float) -> None:
        """Give this attempt more time (kept in the memo, so it holds across parks)."""
        self.memo["extra_seconds"] = float(self.memo.get("extra_seconds", 0)) + seconds

    def save_faults(self, faults: list, *, unfenced: bool = False) -> None:
        ledger.faults_used(self.lease, faults, unfenced=unfenced)
