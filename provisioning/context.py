"""What a step sees of the run: the tenant, the driver, and fenced ways to report."""

from __future__ import annotations

import threading
import time
from functools import cached_property

from provisioning import ledger
from provisioning.errors import Cancelled, Fenced
from provisioning.models import ProvisioningRun, StepRun

CANCEL_POLL_SECONDS = 0.25


class RunState:
    """Shared between the engine and its heartbeat thread."""

    def __init__(self, lease: ledger.Lease):
        self.lease = lease
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._last_cancel_check = 0.0

    def check(self) -> None:
        if self.lost.is_set():
            raise Fenced(f"run {self.lease.run_id}: lease lost")
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
        from provisioning.drivers import get_driver

        return get_driver()


class StepContext(VerifyContext):
    """What a running step sees: a VerifyContext plus the fenced ways to report and wait."""

    def __init__(self, state: RunState, run: ProvisioningRun, step_run: StepRun, seconds: float):
        super().__init__(run)
        self.state = state
        self.lease = state.lease
        self.step_run = step_run
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self._last_progress: dict | None = None

    def log(self, message: str, level: str = "info") -> None:
        ledger.step_log(self.lease, self.step_run, message, level)

    def progress(self, message: str, fraction: float | None = None, replicas=None) -> None:
        progress = {"message": message}
        if fraction is not None:
            progress["fraction"] = round(max(0.0, min(1.0, fraction)), 3)
        if replicas is not None:
            progress["replicas"] = replicas
        if progress != self._last_progress:  # only changes are written and pushed
            self._last_progress = progress
            ledger.step_progress(self.lease, self.step_run, progress)

    def check_cancel(self) -> None:
        self.state.check()

    def sleep(self, seconds: float) -> None:
        """Sleep, waking to honour a cancel or a lost lease."""
        end = time.monotonic() + seconds
        while True:
            self.check_cancel()
            left = end - time.monotonic()
            if left <= 0:
                return
            self.state.cancel.wait(min(left, CANCEL_POLL_SECONDS))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def extend_deadline(self, seconds: float) -> None:
        self.deadline += seconds

    def save_faults(self, faults: list) -> None:
        ledger.faults_used(self.lease, faults)
