"""What the console's partials show, computed from the rows.

The pages, the htmx responses and the websocket pushes all build their
template context here, so a pushed fragment is the same HTML a reload would
give, and two tabs rendering the same rows always agree. Nothing here depends
on the request: a push has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.core.paginator import Paginator
from django.db.models import Prefetch, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from provisioning import actions, stall
from provisioning.errors import CATEGORIES
from provisioning.expectations import expected_seconds
from provisioning.failures import recent_failures
from provisioning.models import AuditEvent, ProvisioningRun, StepLogLine, StepRun, latest_run
from provisioning.status import ACTIVE_STEP, current_step, iso, stopped_step
from provisioning.steps import BY_ID, CREATING_STEP_IDS, TOTAL, label_of, position_of
from tenants.filters import ALL, audit_query
from tenants.models import Tenant

S = StepRun.Status
RunStatus = ProvisioningRun.Status
Kind = ProvisioningRun.Kind

DONE = (S.SUCCEEDED, S.SKIPPED)
LOG_LINES_SHOWN = 200
EVENTS_ON_DETAIL = 30
AUDIT_PAGE_SIZE = 50
LIST_LIMIT = 200

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


def step_summary(tenant: Tenant, run: ProvisioningRun | None, steps: list[StepRun]) -> dict:
    """The "Step N/M · label" line, shared by the detail page and the list.

    ``since`` is when the current step started (the page ticks the elapsed
    time from it); ``took`` is the whole run's duration once it finished.
    """
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
    current = current_step(run, steps)
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
            found = flagged_stall(current, tenant.plan)
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
    stopped = stopped_step(run, steps)
    verb = "Cancelled" if run.cancelled else "Failed"
    if stopped is not None:
        label = label_of(stopped.step_id)
        summary.update(position=stopped.position, label=label)
        summary["text"] = f"{verb} at step {stopped.position}/{TOTAL} · {label}"
    else:
        summary["text"] = verb
    summary["tone"] = "warn" if run.cancelled else "bad"
    return summary


def progress_view(tenant: Tenant, run: ProvisioningRun | None, steps: list[StepRun]) -> dict:
    """What the progress bar needs: the server's floor, and what the page interpolates from.

    The page moves the bar inside a running step from ``started_at`` and
    ``expected`` (and never below ``reported``), and keeps the highest value
    it has shown per ``key`` so that a re-render never moves it backwards.
    """
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
    current = current_step(run, steps)
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
            stopped = stopped_step(run, steps)
            done = max(0, (stopped.position if stopped else 1) - 1)
    view["done"] = done
    within = view["reported"] if view["mode"] == "live" else 0.0
    view["percent"] = round(min(100.0, (done + within) / TOTAL * 100), 1)
    view["label"] = f"{done} of {TOTAL} steps done"
    return view


def _best_effort(step: StepRun) -> bool:
    definition = BY_ID.get(step.step_id)
    return bool(definition and definition.best_effort)


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


def step_rows(tenant: Tenant, run: ProvisioningRun | None, steps: list[StepRun]) -> list[StepRow]:
    rows = []
    stopped = stopped_step(run, steps)
    failing = stopped.step_id if stopped else ""
    cancelled = bool(run and run.cancelled)
    provisioning = bool(run and run.kind == Kind.PROVISION)
    watching = provisioning and run.status == RunStatus.RUNNING
    parked = bool(run and run.is_parked)
    now = timezone.now()
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
        found = flagged_stall(step, tenant.plan, now) if watching else None
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
                replicas=[
                    {
                        "name": r.get("name", "?"),
                        "state": r.get("state", "unknown"),
                        "css": REPLICA_STATES.get(r.get("state", ""), "muted"),
                    }
                    for r in progress.get("replicas") or []
                    if isinstance(r, dict)
                ],
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


def error_view(tenant: Tenant, run: ProvisioningRun | None, steps: list[StepRun]) -> dict | None:
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
    stopped = stopped_step(run, steps)
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

ACTION_ORDER = ("cancel", "retry", "reset", "decommission")
RELEVANT = {
    Tenant.State.PROVISIONING: ("cancel", "decommission"),
    Tenant.State.FAILED: ("retry", "reset", "decommission"),
    Tenant.State.ACTIVE: ("decommission",),
    Tenant.State.DECOMMISSIONING: ("decommission",),
    Tenant.State.DECOMMISSIONED: (),
}
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
        "Clears the last attempt so that the next retry starts from the first step.",
    ),
    "decommission": (
        "Decommission",
        "Removes the containers, network, route, schema and identity, and frees the slug.",
    ),
}


def actions_view(tenant: Tenant, role: str) -> dict:
    if role != "operator":
        return {"may_act": False, "items": []}
    allowed = actions.allowed_actions(tenant)
    force = actions.needs_force(tenant) if tenant.state == Tenant.State.FAILED else False
    items = []
    for name in RELEVANT.get(tenant.state, ()):
        ok, why = allowed[name]
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
                "failures": actions.failed_attempts(tenant) if force and name == "retry" else 0,
            }
        )
    return {"may_act": True, "items": items}


# ---------------------------------------------------------------- events


def summarize_event(event: AuditEvent) -> str:
    d = event.details or {}
    kind = event.type
    step = label_of(d["step"]) if d.get("step") else ""
    reason = f" — “{d['reason']}”" if d.get("reason") else ""
    if kind == "tenant.created":
        return f"Created {d.get('slug', '')}-{d.get('org', '')} on plan {d.get('plan', '?')}"
    if kind == "tenant.provisioning.started":
        return f"Attempt {d.get('attempt', '?')} started"
    if kind == "tenant.provisioning.step_started":
        attempt = f" (attempt {d['attempt']})" if (d.get("attempt") or 1) > 1 else ""
        return f"Step {d.get('position', '?')}/{TOTAL} {step} started{attempt}"
    if kind == "tenant.provisioning.step_retrying":
        return f"{step}: attempt {d.get('attempt', '?')} failed, retrying: {d.get('error', '')}"
    if kind == "tenant.provisioning.step_completed":
        if d.get("outcome") == "failed":
            return f"{step} failed (best effort, tenant unaffected): {d.get('error', '')}"
        took = fmt_duration(d.get("duration_s")) if d.get("duration_s") is not None else ""
        return f"{step} done" + (f" in {took}" if took else "")
    if kind == "tenant.provisioning.completed":
        return d.get("message") or "Tenant activated"
    if kind in ("tenant.provisioning.failed", "tenant.provisioning.cancelled"):
        verb = "Cancelled" if kind.endswith("cancelled") else "Failed"
        where = f" at {label_of(d['failed_step'])}" if d.get("failed_step") else ""
        error = f": {d['error']}" if d.get("error") and verb == "Failed" else ""
        return f"{verb}{where} (attempt {d.get('attempt', '?')}){error}"
    if kind == "tenant.provisioning.stalled":
        elapsed = fmt_duration(d.get("elapsed_s"))
        usual = fmt_duration(d.get("expected_s"))
        return f"{step} flagged as stalled: running {elapsed}, usually ~{usual}" + (
            f" (flagged after {fmt_duration(d['threshold_s'])})" if d.get("threshold_s") else ""
        )
    if kind == "tenant.provisioning.compensated":
        return f"Undid {step}"
    if kind == "tenant.provisioning.cancel_requested":
        return f"Cancel requested (attempt {d.get('attempt', '?')}){reason}"
    if kind == "tenant.provisioning.reset":
        return f"Attempt {d.get('attempt', '?')} reset{reason}"
    if kind == "tenant.provisioning.retried":
        resumes = f", resuming at {label_of(d['resumes_at'])}" if d.get("resumes_at") else ""
        forced = " (forced)" if d.get("forced") else ""
        return f"Retry: attempt {d.get('attempt', '?')}{resumes}{forced}{reason}"
    if kind == "tenant.decommission.started":
        return f"Decommission started (was {d.get('from_state', '?')}){reason}"
    if kind == "tenant.decommission.completed":
        return "Decommissioned; slug freed"
    return ", ".join(f"{k}: {v}" for k, v in d.items())[:200]


def event_tone(event_type: str) -> str:
    if event_type.endswith((".completed",)) and "step" not in event_type:
        return "ok"
    if event_type.endswith((".failed", ".step_retrying")):
        return "bad"
    if event_type.endswith(
        (".cancelled", ".cancel_requested", ".compensated", ".reset", ".stalled")
    ):
        return "warn"
    return "muted"


def event_row(event: AuditEvent) -> dict:
    return {
        "seq": event.seq,
        "type": event.type,
        "short_type": event.type.removeprefix("tenant."),
        "created_at": event.created_at,
        "actor": event.actor,
        "tenant": event.tenant,
        "summary": summarize_event(event),
        "tone": event_tone(event.type),
    }


# ---------------------------------------------------------------- whole regions


def detail_context(tenant: Tenant, role: str) -> dict:
    """Everything the detail page's live regions show, read fresh from the database."""
    tenant = Tenant.objects.select_related("plan", "created_by").get(pk=tenant.pk)
    run = latest_run(tenant)
    steps = steps_of(run, with_logs=True)
    events = [
        event_row(e)
        for e in tenant.events.select_related("tenant").order_by("-seq")[:EVENTS_ON_DETAIL]
    ]
    return {
        "tenant": tenant,
        "role": role,
        "run": run,
        "is_decommission": bool(run and run.kind == Kind.DECOMMISSION),
        "summary": step_summary(tenant, run, steps),
        "progress": progress_view(tenant, run, steps),
        "steps": step_rows(tenant, run, steps),
        "activated": tenant.state == Tenant.State.ACTIVE and tenant.activated_at is not None,
        # Only the latest run's failure: once a retry or a decommission
        # follows, the earlier error is history (the events keep it).
        "error": error_view(tenant, run, steps),
        "actions": actions_view(tenant, role),
        "events": events,
        "events_total": tenant.events.count(),
        "now_iso": iso(timezone.now()),
    }


def banner_context(user) -> dict:
    """The "Last attempt failed" banner: the user's latest failure (24 h), unless dismissed."""
    failures, degraded = recent_failures(user)
    failure = failures[0] if failures and not failures[0]["dismissed"] else None
    return {"failure": failure, "banner_degraded": degraded}


def tenant_rows(*, state: str = "", q: str = "") -> dict:
    """The tenants list: at most LIST_LIMIT rows, each with its current step, in 3 queries."""
    tenants = Tenant.objects.select_related("plan", "created_by")
    if state == ALL:
        pass
    elif state:
        tenants = tenants.filter(state=state)
    else:
        tenants = tenants.exclude(state=Tenant.State.DECOMMISSIONED)
    if q:
        tenants = tenants.filter(Q(slug__icontains=q) | Q(org__icontains=q))
    total = tenants.count()
    tenants = list(tenants.order_by("-created_at", "-id")[:LIST_LIMIT])
    # The latest run of each tenant in one query (PostgreSQL DISTINCT ON).
    runs = {
        run.tenant_id: run
        for run in ProvisioningRun.objects.filter(tenant__in=tenants)
        .order_by("tenant_id", "-created_at", "-id")
        .distinct("tenant_id")
    }
    steps: dict[int, list[StepRun]] = {}
    for step in StepRun.objects.filter(run__in=runs.values()).order_by("run_id", "position"):
        steps.setdefault(step.run_id, []).append(step)
    rows = []
    for tenant in tenants:
        run = runs.get(tenant.pk)
        run_steps = steps.get(run.pk, []) if run else []
        rows.append(
            {
                "tenant": tenant,
                "summary": step_summary(tenant, run, run_steps),
                "progress": progress_view(tenant, run, run_steps),
            }
        )
    return {"rows": rows, "total": total, "shown": len(rows), "state": state, "q": q}


def audit_context(*, type_prefix: str = "", tenant: str = "", page: int = 1) -> dict:
    events = AuditEvent.objects.select_related("tenant").order_by("-seq")
    if type_prefix:
        events = events.filter(type__startswith=type_prefix)
    if tenant:
        events = events.filter(tenant__slug=tenant)
    paginator = Paginator(events, AUDIT_PAGE_SIZE)
    page_obj = paginator.get_page(page)
    filters = {"type_prefix": type_prefix, "tenant": tenant}

    def link(number: int) -> str:
        return "?" + audit_query(filters, page=number)

    window = range(max(1, page_obj.number - 2), min(paginator.num_pages, page_obj.number + 2) + 1)
    return {
        "page_obj": page_obj,
        "prev_link": link(page_obj.number - 1) if page_obj.has_previous() else "",
        "next_link": link(page_obj.number + 1) if page_obj.has_next() else "",
        "page_links": [(n, link(n), n == page_obj.number) for n in window],
        "events": [event_row(e) for e in page_obj.object_list],
        "type_prefix": type_prefix,
        "tenant_slug": tenant,
    }
