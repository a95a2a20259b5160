"""The run's state as the pages say it: "Step N/M", the progress bar, durations.

Shared by the detail page and the tenants list. Nothing here depends on the
request: a push has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Prefetch
from django.utils import timezone

from provisioning import stall
from provisioning.expectations import expected_seconds
from provisioning.models import ProvisioningRun, StepLogLine, StepRun
from provisioning.status import ACTIVE_STEP, current_step, iso, stopped_step
from provisioning.steps import BY_ID, TOTAL, label_of, position_of
from tenants.models import Tenant

S = StepRun.Status
RunStatus = ProvisioningRun.Status
Kind = ProvisioningRun.Kind

DONE = (S.SUCCEEDED, S.SKIPPED)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def flagged_stall(step: StepRun, plan, now: datetime | None = None) -> stall.Verdict | None:
    """The step's stall verdict when it counts as stalled: by the clock, or marked by a worker."""
    found = stall.verdict(step, plan, now)
    return found if found and (found.stalled or step.stalled_at) else None


@dataclass(frozen=True)
class Snapshot:
    """A run's derived state, computed once per render and read by every partial.

    ``current``: the step a live run is on; ``stopped``: where a finished
    provisioning run stopped; ``stalls``: the flagged stall verdict of each
    step of a running provisioning run, by position.
    """

    tenant: Tenant
    run: ProvisioningRun | None
    steps: list[StepRun]
    now: datetime
    current: StepRun | None
    stopped: StepRun | None
    stalls: dict[int, stall.Verdict]

    @classmethod
    def of(cls, tenant: Tenant, run: ProvisioningRun | None, steps: list[StepRun]) -> Snapshot:
        now = timezone.now()
        watching = bool(run and run.kind == Kind.PROVISION and run.status == RunStatus.RUNNING)
        stalls = {}
        if watching:
            for step in steps:
                if found := flagged_stall(step, tenant.plan, now):
                    stalls[step.position] = found
        return cls(
            tenant=tenant,
            run=run,
            steps=steps,
            now=now,
            current=current_step(run, steps),
            stopped=stopped_step(run, steps),
            stalls=stalls,
        )


# ---------------------------------------------------------------- runs and steps


def steps_of(run: ProvisioningRun | None, *, with_logs: bool = False) -> list[StepRun]:
    if run is None:
        return []
    steps = run.steps.order_by("position")
    if with_logs:
        steps = steps.prefetch_related(
            Prefetch("log_lines", queryset=StepLogLine.objects.order_by("id"))
        )
    return list(steps)


def step_summary(snap: Snapshot) -> dict:
    """The "Step N/M · label" line, shared by the detail page and the list.

    ``since`` is when the current step started (the page ticks the elapsed
    time from it); ``took`` is the whole run's duration once it finished.
    """
    run, current = snap.run, snap.current
    summary = {
        "text": "",
        "prefix": "",
        "position": None,
        "total": TOTAL,
        "label": "",
        "since": None,
        "took": "",
        "tone": "muted",
        "stalled": False,
        "stall_title": "",
    }
    if run is None:
        summary["text"] = "Not started"
        return summary
    if run.is_live and current is not None:
        summary.update(position=current.position, label=label_of(current.step_id))
        if run.kind == Kind.DECOMMISSION:
            summary["prefix"] = "Removing"
        elif run.status == RunStatus.COMPENSATING:
            summary["prefix"] = "Cancelling · undoing" if run.cancelled else "Undoing"
        elif run.cancel_requested:
            summary["prefix"] = "Cancel requested"
        elif current.status == S.RETRYING:
            summary["prefix"] = "Retrying"
        elif run.status == RunStatus.QUEUED or current.status == S.PENDING:
            summary["prefix"] = "Waiting for a worker" if run.started_at is None else "Next"
        summary["since"] = iso(current.started_at or run.started_at or run.created_at)
        summary["tone"] = "busy"
        if run.kind == Kind.PROVISION and run.status == RunStatus.RUNNING:
            found = snap.stalls.get(current.position)
            if found:
                summary["stalled"] = True
                summary["stall_title"] = (
                    f"Running {fmt_duration(found.elapsed)}; usually ~{fmt_duration(found.median)} "
                    f"(p95 {fmt_duration(found.p95)})"
                )
        summary["text"] = f"Step {current.position}/{TOTAL} · {summary['label']}"
        return summary
    if run.is_live:
        summary.update(text="Finishing", tone="busy", since=iso(run.started_at or run.created_at))
        return summary
    if run.started_at and run.finished_at:
        summary["took"] = fmt_duration((run.finished_at - run.started_at).total_seconds())
    if run.kind == Kind.DECOMMISSION:
        if run.status == RunStatus.SUCCEEDED:
            summary.update(text="Decommissioned", tone="muted")
        else:
            summary.update(text="Decommission failed", tone="bad")
        return summary
    if run.status == RunStatus.SUCCEEDED:
        summary.update(text=f"All {TOTAL} steps done", tone="ok", position=TOTAL)
        return summary
    stopped = snap.stopped
    verb = "Cancelled" if run.cancelled else "Failed"
    if stopped is not None:
        label = label_of(stopped.step_id)
        summary.update(position=stopped.position, label=label)
        summary["text"] = f"{verb} at step {stopped.position}/{TOTAL} · {label}"
    else:
        summary["text"] = verb
    summary["tone"] = "warn" if run.cancelled else "bad"
    return summary


def progress_view(snap: Snapshot) -> dict:
    """What the progress bar needs: the server's floor, and what the page interpolates from.

    The page moves the bar inside a running step from ``started_at`` and
    ``expected`` (and never below ``reported``), and keeps the highest value
    it has shown per ``key`` so that a re-render never moves it backwards.
    """
    tenant, run, steps, current = snap.tenant, snap.run, snap.steps, snap.current
    view = {
        "key": f"t{tenant.pk}-r{run.pk}" if run else f"t{tenant.pk}",
        "total": TOTAL,
        "done": 0,
        "started_at": None,
        "expected": 0.0,
        "reported": 0.0,
        "mode": "idle",
        "percent": 0,
        "label": "",
    }
    if run is None:
        return view
    if run.kind == Kind.DECOMMISSION:
        done = sum(1 for s in steps if s.status == S.COMPENSATED)
    else:
        done = sum(
            1 for s in steps if s.status in DONE or (s.status == S.FAILED and _best_effort(s))
        )
    if run.is_live:
        view["mode"] = "undo" if run.status == RunStatus.COMPENSATING else "live"
        if current is not None and current.status in ACTIVE_STEP and current.started_at:
            view["started_at"] = iso(current.started_at)
            view["expected"] = round(expected_seconds(current.step_id, tenant.plan), 2)
            if current.status == S.RUNNING:
                view["reported"] = float((current.progress or {}).get("fraction") or 0.0)
        if run.status == RunStatus.COMPENSATING:
            # Undoing: the bar holds where the run got to and changes colour.
            started = [s.position for s in steps if s.started_at is not None]
            position = position_of(run.failed_step) or (max(started) if started else 1)
            done = max(0, position - 1)
            view["started_at"] = None
    elif run.status == RunStatus.SUCCEEDED:
        view["mode"] = "done"
        done = TOTAL
    else:
        view["mode"] = "cancelled" if run.cancelled else "stopped"
        if run.kind == Kind.PROVISION:
            stopped = snap.stopped
            done = max(0, (stopped.position if stopped else 1) - 1)
    view["done"] = done
    within = view["reported"] if view["mode"] == "live" else 0.0
    view["percent"] = round(min(100.0, (done + within) / TOTAL * 100), 1)
    view["label"] = f"{done} of {TOTAL} steps done"
    return view


def _best_effort(step: StepRun) -> bool:
    definition = BY_ID.get(step.step_id)
    return bool(definition and definition.best_effort)
