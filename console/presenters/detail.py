"""The tenant detail page: its timeline, error card, actions and events.

The page, the htmx responses and the websocket pushes all build their context
with ``detail_context``, so a pushed fragment is the same HTML a reload would
give, and two tabs rendering the same rows always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, Window
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from console.presenters.events import event_row
from console.presenters.health import health_view
from console.presenters.runs import (
    Kind,
    RunStatus,
    S,
    Snapshot,
    fmt_duration,
    progress_view,
    step_summary,
    steps_of,
)
from provisioning import actions
from provisioning.errors import CATEGORIES
from provisioning.expectations import expected_seconds
from provisioning.models import AuditEvent, ProvisioningRun, StepRun, latest_run
from provisioning.status import ACTIVE_STEP, iso
from provisioning.steps import BY_ID, CREATING_STEP_IDS, TOTAL, label_of
from tenants.models import Tenant

LOG_LINES_SHOWN = 200
EVENTS_ON_DETAIL = 30

# Timeline marks: one glyph and one CSS modifier per step status. The glyph
# is decorative (aria-hidden); the status text beside it is what is read out.
MARKS = {
    S.PENDING: ("○", "pending", "Pending"),
    S.RUNNING: ("", "running", "Running"),
    S.RETRYING: ("", "retrying", "Retrying"),
    S.SUCCEEDED: ("✓", "succeeded", "Done"),
    S.FAILED: ("✕", "failed", "Failed"),
    S.COMPENSATING: ("", "compensating", "Undoing"),
    S.COMPENSATED: ("↺", "compensated", "Undone"),
    S.SKIPPED: ("»", "skipped", "Reused"),
}

REPLICA_STATES = {
    "ready": "ok",
    "running": "info",
    "starting": "warn",
    "created": "warn",
    "restarting": "warn",
    "exited": "bad",
    "dead": "bad",
    "failed": "bad",
}


@dataclass
class StepRow:
    step: StepRun
    position: int
    label: str
    status: str
    mark: str
    css: str
    status_text: str
    spinner: bool
    started_at: datetime | None
    duration: str
    error: str
    error_title: str
    next_attempt_at: datetime | None
    message: str
    # A parked step (its run waits for its next check, holding no worker)
    # shows as running, plus when it checks again.
    next_check_at: datetime | None = None
    replicas: list[dict] = field(default_factory=list)
    log_lines: list = field(default_factory=list)
    log_hidden: int = 0
    open_log: bool = False
    attempt_text: str = ""
    expected: str = ""
    stalled: bool = False
    stall_text: str = ""
    runbook: str = ""


def step_rows(snap: Snapshot, health: dict | None = None) -> list[StepRow]:
    """The timeline. ``health`` (an active tenant's): its replicas' chips replace
    the readiness step's, which only said how they stood when it ran."""
    tenant, run, steps, stopped = snap.tenant, snap.run, snap.steps, snap.stopped
    rows = []
    failing = stopped.step_id if stopped else ""
    cancelled = bool(run and run.cancelled)
    provisioning = bool(run and run.kind == Kind.PROVISION)
    parked = bool(run and run.is_parked)
    for step in steps:
        mark, css, text = MARKS.get(step.status, ("?", "pending", step.status))
        definition = BY_ID.get(step.step_id)
        max_attempts = (
            definition.budget(tenant.plan, strict=False)[0] if definition else step.attempts
        )
        was_failing = bool(failing) and step.step_id == failing
        if was_failing and cancelled:
            # Where the cancel caught the run: its own mark, then undone like the rest.
            mark, css = "■", "cancelled"
            text = "Cancelled here" + (" · undone" if step.status == S.COMPENSATED else "")
        elif was_failing and step.status in (S.COMPENSATED, S.COMPENSATING):
            # The failed step is undone too: keep its cross, say it was undone.
            mark, css = "✕", "failed"
            text = "Failed · undone" if step.status == S.COMPENSATED else "Failed · undoing"
        progress = step.progress or {}
        live = step.status in ACTIVE_STEP
        lines = list(step.log_lines.all()) if hasattr(step, "_prefetched_objects_cache") else []
        hidden = max(0, len(lines) - LOG_LINES_SHOWN)
        category = step.error_category or "unknown"
        attempt_text = ""
        if step.status == S.RETRYING:
            attempt_text = f"Attempt {step.attempts} of {max_attempts} failed"
        elif step.attempts > 1 or (live and step.status == S.RUNNING and max_attempts > 1):
            attempt_text = f"Attempt {step.attempts} of {max_attempts}"
        expected = stall_text = runbook = ""
        if provisioning and step.status in (S.PENDING, S.RUNNING, S.RETRYING, S.SUCCEEDED):
            expected = f"expected ~{fmt_duration(expected_seconds(step.step_id, tenant.plan))}"
        found = snap.stalls.get(step.position)
        if found:
            stall_text = (
                f"Running for {fmt_duration(found.elapsed)}, well past the usual "
                f"~{fmt_duration(found.median)} (p95 {fmt_duration(found.p95)}; "
                f"flagged after {fmt_duration(found.threshold)})."
            )
            runbook = found.action
        rows.append(
            StepRow(
                step=step,
                position=step.position,
                label=label_of(step.step_id),
                status=step.status,
                mark=mark,
                css=css,
                status_text=text,
                spinner=live,
                started_at=step.started_at,
                duration=fmt_duration(step.duration_s),
                error=step.error,
                error_title=CATEGORIES.get(category, CATEGORIES["unknown"])[0]
                if step.error
                else "",
                next_attempt_at=step.next_attempt_at if step.status == S.RETRYING else None,
                message=progress.get("message", "") if live else "",
                next_check_at=(
                    parse_datetime(progress.get("next_check_at") or "")
                    if parked and step.status == S.RUNNING
                    else None
                ),
                replicas=(
                    health["replicas"]
                    if health and step.step_id == "wait_ready"
                    else [
                        {
                            "name": r.get("name", "?"),
                            "state": r.get("state", "unknown"),
                            "css": REPLICA_STATES.get(r.get("state", ""), "muted"),
                            "node": r.get("node", ""),
                        }
                        for r in progress.get("replicas") or []
                        if isinstance(r, dict)
                    ]
                ),
                log_lines=lines[hidden:],
                log_hidden=hidden,
                open_log=step.status == S.FAILED or (was_failing and not cancelled),
                attempt_text=attempt_text,
                expected=expected,
                stalled=found is not None,
                stall_text=stall_text,
                runbook=runbook,
            )
        )
    return rows


# ---------------------------------------------------------------- error card

# What the error card lists as created and removed: emails cannot be unsent.
RESOURCE_STEPS = tuple(s for s in CREATING_STEP_IDS if s != "send_welcome_emails")


def describe_outputs(step_id: str, outputs: dict) -> str:
    """One line naming what a step created, from its recorded outputs."""
    o = outputs or {}
    if step_id == "allocate_storage":
        return f"PostgreSQL schema {o.get('schema', '?')}"
    if step_id == "allocate_identity":
        return f"Organization and first admin {o.get('admin_email', '')}".strip()
    if step_id == "allocate_network":
        return f"Network {o.get('network', '?')} and route {o.get('hostname', '?')}"
    if step_id == "seed_schema":
        tables = ", ".join(o.get("tables") or [])
        return f"Tables {tables} in {o.get('schema', '?')}" if tables else "Tenant tables"
    if step_id == "deploy_workloads":
        names = [r.get("name", "?") for r in o.get("replicas") or [] if isinstance(r, dict)]
        return f"{len(names)} replica(s): {', '.join(names)}" if names else "Replicas"
    if step_id == "mark_active":
        return f"Route switched on for {o.get('url', 'the tenant')}"
    return ", ".join(f"{k}={v}" for k, v in o.items())


def error_view(snap: Snapshot) -> dict | None:
    tenant, run, steps = snap.tenant, snap.run, snap.steps
    """The failure card: which step, what error, its category and the next action."""
    if run is None or run.is_live or run.status != RunStatus.FAILED:
        return None
    if tenant.state not in (Tenant.State.FAILED, Tenant.State.DECOMMISSIONING):
        return None
    category = "cancelled" if run.cancelled else (run.error_category or "unknown")
    title, next_action = CATEGORIES.get(category, CATEGORIES["unknown"])
    resources = []
    for step in steps:
        if step.step_id not in RESOURCE_STEPS or not step.outputs:
            continue
        if step.status == S.COMPENSATED:
            state, css = "Removed", "ok"
        elif step.status == S.COMPENSATING:
            state, css = "Removal failed" if step.error else "Being removed", "bad"
        else:
            state, css = "Still there", "warn"
        resources.append(
            {
                "step": label_of(step.step_id),
                "what": describe_outputs(step.step_id, step.outputs),
                "state": state,
                "css": css,
                "error": step.error if step.status == S.COMPENSATING else "",
            }
        )
    stopped = snap.stopped
    cancel_event = None
    if run.cancelled:
        cancel_event = (
            AuditEvent.objects.filter(run=run, type="tenant.provisioning.cancel_requested")
            .order_by("-seq")
            .first()
        )
    summary = ""
    if category == "platform" and run.kind == Kind.PROVISION:
        # What happened, in words: the error below is for whoever fixes the bug.
        where = f" while running {label_of(stopped.step_id)}" if stopped else ""
        summary = (
            f"The provisioning engine hit an unexpected error or lost its worker "
            f"{run.resumes} time{'s' if run.resumes != 1 else ''}{where} and gave up."
        )
    if run.kind == Kind.DECOMMISSION:
        heading = "Decommission failed"
        next_action = "Look at the steps' logs, fix what blocks removal, then decommission again."
    elif run.cancelled:
        heading = "Provisioning was cancelled"
    else:
        heading = "Provisioning failed"
    return {
        "heading": heading,
        "run": run,
        "cancelled": run.cancelled,
        "step_label": label_of(stopped.step_id) if stopped else "",
        "position": stopped.position if stopped else None,
        "cancelled_by": cancel_event.actor if cancel_event else "",
        "cancel_reason": (cancel_event.details or {}).get("reason", "") if cancel_event else "",
        "show_error": bool(run.error) and not run.cancelled,
        "total": TOTAL,
        "error": run.error,
        "category": category,
        "category_title": title,
        "summary": summary,
        "next_action": next_action,
        "resources": resources,
    }


# ---------------------------------------------------------------- actions

ACTION_ORDER = ("cancel", "retry", "reset", "repair", "decommission")
RELEVANT = {
    Tenant.State.PROVISIONING: ("cancel", "reset", "decommission"),
    Tenant.State.FAILED: ("retry", "reset", "decommission"),
    Tenant.State.ACTIVE: ("repair", "decommission"),
    Tenant.State.DECOMMISSIONING: ("decommission",),
    Tenant.State.DECOMMISSIONED: (),
}
# Reset of a provisioning tenant is the way out for a run whose worker died
# (its lease expired, nobody advances it); while a worker holds the run a
# greyed-out Reset would only be noise beside Cancel.
OFFERED_ONLY_WHEN_ALLOWED = {(Tenant.State.PROVISIONING, "reset")}
ACTION_TEXT = {
    "cancel": (
        "Cancel provisioning",
        "The run stops at its next check, undoes the finished steps in reverse "
        "and leaves the tenant failed (cancelled).",
    ),
    "retry": (
        "Retry",
        "Starts a new attempt. It resumes after the steps whose work is still there.",
    ),
    "reset": (
        "Reset",
        "Clears the last attempt (and ends it, if its worker died) so that the next retry "
        "starts from the first step.",
    ),
    "repair": (
        "Repair",
        "Brings the tenant to its plan now, as the repair loop does every 30 s: recreates "
        "missing replicas, starts stopped ones, replaces unhealthy ones and points the "
        "route at them. Each repair is recorded with your reason.",
    ),
    "decommission": (
        "Decommission",
        "Removes the containers, network, route, schema and identity, and frees the slug.",
    ),
}


def actions_view(tenant: Tenant, role: str, run: ProvisioningRun | None) -> dict:
    """``run``: the tenant's latest run."""
    if role != "operator":
        return {"may_act": False, "items": []}
    allowed = actions.allowed_actions(tenant, run)
    force = actions.needs_force(tenant) if tenant.state == Tenant.State.FAILED else False
    items = []
    for name in RELEVANT.get(tenant.state, ()):
        ok, why = allowed[name]
        if not ok and (tenant.state, name) in OFFERED_ONLY_WHEN_ALLOWED:
            continue
        title, explanation = ACTION_TEXT[name]
        items.append(
            {
                "name": name,
                "title": title,
                "explanation": explanation,
                "allowed": ok,
                "reason": why,
                "url": reverse(f"tenant-{name}", args=[tenant.slug]),
                "danger": name in ("cancel", "decommission"),
                "needs_force": force and name == "retry",
                "needs_reason": name == "repair",
                "failures": actions.failed_attempts(tenant) if force and name == "retry" else 0,
            }
        )
    return {"may_act": True, "items": items}


def detail_context(tenant: Tenant, role: str) -> dict:
    """Everything the detail page's live regions show, read fresh from the database."""
    # The health row comes with the tenant (one-to-one, absent until the repair loop looks).
    tenant = Tenant.objects.select_related("plan", "created_by", "workload_health").get(
        pk=tenant.pk
    )
    run = latest_run(tenant)
    snap = Snapshot.of(tenant, run, steps_of(run, with_logs=True))
    # The newest events, each carrying the count of them all (one query, not two).
    newest = list(
        tenant.events.annotate(total=Window(Count("seq"))).order_by("-seq")[:EVENTS_ON_DETAIL]
    )
    for event in newest:
        event.tenant = tenant
    events = [event_row(e) for e in newest]
    health = health_view(tenant, getattr(tenant, "workload_health", None))
    return {
        "tenant": tenant,
        "role": role,
        "health": health,
        "run": run,
        "is_decommission": bool(run and run.kind == Kind.DECOMMISSION),
        "summary": step_summary(snap),
        "progress": progress_view(snap),
        "steps": step_rows(snap, health),
        "activated": tenant.state == Tenant.State.ACTIVE and tenant.activated_at is not None,
        # Only the latest run's failure: once a retry or a decommission
        # follows, the earlier error is history (the events keep it).
        "error": error_view(snap),
        "actions": actions_view(tenant, role, run),
        "events": events,
        "events_total": newest[0].total if newest else 0,
        "now_iso": iso(timezone.now()),
    }
