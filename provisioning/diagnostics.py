"""The escalation bundle: everything an operator attaches when handing a tenant on.

``bundle(tenant)`` is what ``manage.py tenant_diagnostics SLUG --json`` prints
and what the detail page's "Copy diagnostics" button copies
(``/tenants/<slug>/diagnostics.json``); ``as_text`` is the command's plain
rendering. Everything is read from the rows; the only live checks are the
steps' own ``verify`` (or a direct lookup) of whether what each step created
is still there, and a failure there reads "unknown: <error>", never an error.
"""

from __future__ import annotations

import json

from django.utils import timezone

from provisioning import stall
from provisioning.context import VerifyContext
from provisioning.expectations import expectation
from provisioning.models import AuditEvent, ProvisioningRun, Route, StepRun, WelcomeEmail
from provisioning.status import (
    ACTIVE_STEP,
    current_step,
    iso,
    step_json,
    stopped_step,
    workloads_json,
)
from provisioning.steps import BY_ID, CREATING_STEP_IDS, label_of
from tenants.models import Tenant

S = StepRun.Status
Kind = ProvisioningRun.Kind
OPERATOR_ACTIONS = {
    "tenant.provisioning.cancel_requested": "cancel",
    "tenant.provisioning.reset": "reset",
    "tenant.provisioning.retried": "retry",
    "tenant.decommission.started": "decommission",
}
LOG_LINES = 100
EVENTS = 100


def _seconds(start, end) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def _step_summary(step: StepRun) -> dict:
    # The status JSON's step, plus what an escalation needs on top.
    return {
        **step_json(step),
        "error_category": step.error_category or None,
        "stalled_at": iso(step.stalled_at),
    }


def _attempt(run: ProvisioningRun, steps: list[StepRun]) -> dict:
    return {
        "run_id": run.pk,
        "kind": run.kind,
        "attempt": run.attempt,
        "status": run.status,
        "created_by": run.created_by.get_username() if run.created_by else "system",
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_s": _seconds(run.started_at, run.finished_at),
        "cancel_requested_at": iso(run.cancel_requested_at),
        "cancelled": run.cancelled,
        "reset_at": iso(run.reset_at),
        "failed_step": run.failed_step or None,
        "error": run.error or None,
        "error_category": run.error_category or None,
        "faults": run.faults or [],
        "lease_owner": run.lease_owner or None,
        "lease_expires_at": iso(run.lease_expires_at),
        "heartbeat_at": iso(run.heartbeat_at),
        # Parked: no worker holds it until wake_at (a step's wait or a backoff).
        "wake_at": iso(run.wake_at),
        "wait_reason": run.wait_reason or None,
        "steps": [_step_summary(step) for step in steps],
    }


def _still_there(step_id: str, run: ProvisioningRun, outputs: dict):
    """True/False from the step's own check, or "unknown: <why>"."""
    tenant = run.tenant
    try:
        if step_id == "mark_active":
            return Route.objects.filter(tenant=tenant, enabled=True).exists()
        if step_id == "send_welcome_emails":
            return WelcomeEmail.objects.filter(tenant=tenant, sent_at__isnull=False).exists()
        step = BY_ID.get(step_id)
        if step is None:
            return "unknown: no such step in the saga"
        return bool(step.verify(VerifyContext(run), outputs or {}))
    except Exception as exc:  # the engine or database could not answer
        return f"unknown: {type(exc).__name__}: {exc}"[:300]


def _resources(tenant: Tenant, runs: list[ProvisioningRun], steps_by_run: dict) -> list[dict]:
    """The latest recorded outputs of each resource step, and whether they exist now."""
    latest: dict[str, tuple[ProvisioningRun, StepRun]] = {}
    for run in runs:  # oldest first: later runs win
        if run.kind != Kind.PROVISION:
            continue
        for step in steps_by_run.get(run.pk, []):
            if step.step_id in CREATING_STEP_IDS and step.outputs:
                latest[step.step_id] = (run, step)
    resources = []
    for step_id in CREATING_STEP_IDS:
        if step_id not in latest:
            continue
        run, step = latest[step_id]
        exists = _still_there(step_id, run, step.outputs)
        if tenant.state == Tenant.State.DECOMMISSIONED and exists is True:
            note = "still there after decommission: reconcile"
        elif exists is True:
            note = ""
        elif exists is False:
            note = "undone by compensation" if step.status == S.COMPENSATED else "gone"
        else:
            note = "could not check"
        resources.append(
            {
                "step": step_id,
                "label": label_of(step_id),
                "attempt": run.attempt,
                "step_status": step.status,
                "created": step.outputs,
                "exists": exists,
                "note": note,
            }
        )
    return resources


def same_slug(tenant: Tenant) -> list[dict]:
    """Other tenants that held (or hold) this slug: successive provisioning of one name."""
    others = Tenant.objects.filter(slug=tenant.slug).exclude(pk=tenant.pk).select_related("plan")
    return [
        {
            "id": other.pk,
            "slug": other.slug,
            "org": other.org,
            "plan": other.plan.name,
            "state": other.state,
            "created_at": iso(other.created_at),
            "activated_at": iso(other.activated_at),
            "decommissioned_at": iso(other.decommissioned_at),
            "relation": "before" if other.created_at < tenant.created_at else "after",
        }
        for other in others.order_by("created_at", "id")
    ]


def bundle(tenant: Tenant) -> dict:
    tenant = Tenant.objects.select_related("plan", "created_by").get(pk=tenant.pk)
    runs = list(
        tenant.runs.select_related("created_by", "tenant", "tenant__plan").order_by(
            "created_at", "id"
        )
    )
    steps_by_run: dict[int, list[StepRun]] = {}
    for step in StepRun.objects.filter(run__in=runs).order_by("run_id", "position"):
        steps_by_run.setdefault(step.run_id, []).append(step)
    provisions = [r for r in runs if r.kind == Kind.PROVISION]
    latest = provisions[-1] if provisions else None

    last_ok = (
        AuditEvent.objects.filter(
            tenant=tenant,
            run__kind=Kind.PROVISION,
            type="tenant.provisioning.step_completed",
            details__outcome="succeeded",
        )
        .select_related("run")
        .order_by("-seq")
        .first()
    )
    last_successful = None
    if last_ok is not None:
        d = last_ok.details or {}
        last_successful = {
            "id": d.get("step"),
            "label": label_of(d.get("step", "")),
            "position": d.get("position"),
            "attempt": last_ok.run.attempt if last_ok.run else None,
            "at": iso(last_ok.created_at),
        }

    failing = None
    failed_run = next(
        (r for r in reversed(provisions) if r.status == ProvisioningRun.Status.FAILED), None
    )
    if failed_run is not None:
        # Its failed step, or where a cancel caught it (a cancel records no failed step).
        step = stopped_step(failed_run, steps_by_run.get(failed_run.pk, []))
        lines = []
        if step is not None:
            lines = [
                f"{iso(line.at)} {line.level} {line.message}"
                for line in step.log_lines.order_by("-id")[:LOG_LINES]
            ][::-1]
        failing = {
            "id": step.step_id if step else (failed_run.failed_step or None),
            "label": label_of(step.step_id) if step else None,
            "attempt": failed_run.attempt,
            "cancelled": failed_run.cancelled,
            "error": failed_run.error or None,
            "error_category": failed_run.error_category or None,
            "step_attempts": step.attempts if step else None,
            "log": lines,
            "is_latest_attempt": failed_run is latest,
        }

    actions = [
        {
            "action": OPERATOR_ACTIONS[event.type],
            "type": event.type,
            "seq": event.seq,
            "at": iso(event.created_at),
            "actor": event.actor,
            "reason": (event.details or {}).get("reason", ""),
            "attempt": (event.details or {}).get("attempt"),
            "forced": bool((event.details or {}).get("forced")),
        }
        for event in AuditEvent.objects.filter(tenant=tenant, type__in=OPERATOR_ACTIONS).order_by(
            "seq"
        )
    ]
    tried = {
        name: [a["at"] for a in actions if a["action"] == name]
        for name in ("cancel", "reset", "retry", "decommission")
    }
    events = [
        {
            "seq": e.seq,
            "type": e.type,
            "at": iso(e.created_at),
            "actor": e.actor,
            "details": e.details,
        }
        for e in AuditEvent.objects.filter(tenant=tenant).order_by("-seq")[:EVENTS]
    ][::-1]
    current = None
    running = current_step(latest, steps_by_run.get(latest.pk, [])) if latest else None
    if running is not None and running.status in ACTIVE_STEP:
        verdict = stall.verdict(running, tenant.plan)
        current = {
            "id": running.step_id,
            "status": running.status,
            "started_at": iso(running.started_at),
            "stalled_at": iso(running.stalled_at),
            "expected": expectation(running.step_id, tenant.plan).as_dict(),
            "stall": verdict.details(running) | {"stalled": verdict.stalled} if verdict else None,
        }

    return {
        "generated_at": iso(timezone.now()),
        "tenant": {
            "id": tenant.pk,
            "slug": tenant.slug,
            "org": tenant.org,
            "plan": tenant.plan.name,
            "replicas": tenant.plan.replicas,
            "state": tenant.state,
            "url": tenant.url,
            "admin_email": tenant.admin_email,
            "created_by": tenant.created_by.get_username() if tenant.created_by else "system",
            "created_at": iso(tenant.created_at),
            "activated_at": iso(tenant.activated_at),
            "decommissioned_at": iso(tenant.decommissioned_at),
            "resource_key": tenant.key,
            "schema": tenant.schema_name,
        },
        "last_successful_step": last_successful,
        "failing_step": failing,
        "current_step": current,
        "attempts": [_attempt(run, steps_by_run.get(run.pk, [])) for run in runs],
        "operator_actions": actions,
        "tried": tried,
        "resources": _resources(tenant, runs, steps_by_run),
        "workloads": workloads_json(tenant),
        "repairs": _repairs(tenant),
        "placement": _placement(tenant),
        "reschedules": _reschedules(tenant),
        "same_slug": same_slug(tenant),
        "events": events,
    }


def _repairs(tenant: Tenant, limit: int = 20) -> list[dict]:
    """The repair loop's latest repairs of the tenant, newest first."""
    events = AuditEvent.objects.filter(tenant=tenant, type="tenant.workload.repaired")
    return [
        {"at": iso(e.created_at), "actor": e.actor, **(e.details or {})}
        for e in events.order_by("-seq")[:limit]
    ]


def _placement(tenant: Tenant) -> dict | None:
    """Where each replica runs now, asked of a swarm tenant's manager (None for one host)."""
    if tenant.workload_driver != "swarm" or tenant.state == Tenant.State.DECOMMISSIONED:
        return None
    from provisioning.drivers import driver_for

    try:
        replicas = driver_for(tenant).list_replicas(tenant.key)
    except Exception as exc:  # the manager away: say so, the rest of the bundle still helps
        return {"error": f"{exc.__class__.__name__}: {exc}"[:300], "replicas": []}
    return {
        "error": None,
        "replicas": [
            {
                "name": r.name,
                "node": r.node or None,
                "state": r.state,
                "address": f"{r.host}:{r.port}" if r.port else None,
                "task": r.ref or None,
            }
            for r in replicas
        ],
    }


def _reschedules(tenant: Tenant, limit: int = 20) -> list[dict]:
    """Swarm's latest moves of the tenant's replicas (the follower's events), newest first."""
    events = AuditEvent.objects.filter(tenant=tenant, type="tenant.workload.rescheduled")
    return [{"at": iso(e.created_at), **(e.details or {})} for e in events.order_by("-seq")[:limit]]


def as_json(data: dict) -> str:
    return json.dumps(data, indent=2, default=str)


def as_text(data: dict) -> str:
    t = data["tenant"]
    out = [
        f"Diagnostics for {t['slug']}-{t['org']} (tenant id {t['id']}), generated "
        f"{data['generated_at']}",
        f"plan {t['plan']} ({t['replicas']} replica(s))  state {t['state']}  url {t['url']}",
        f"created {t['created_at']} by {t['created_by']}"
        + (f"; activated {t['activated_at']}" if t["activated_at"] else "")
        + (f"; decommissioned {t['decommissioned_at']}" if t["decommissioned_at"] else ""),
        "",
    ]
    last = data["last_successful_step"]
    out.append(
        f"Last successful step: {last['position']}. {last['label']} (attempt {last['attempt']}, "
        f"{last['at']})"
        if last
        else "Last successful step: none"
    )
    failing = data["failing_step"]
    if failing:
        verb = "Cancelled" if failing["cancelled"] else "Failing"
        where = failing["label"] or "-"
        out.append(f"{verb} step: {where} (attempt {failing['attempt']}): {failing['error'] or ''}")
        if failing["log"]:
            out.append("  log:")
            out.extend(f"    {line}" for line in failing["log"])
    current = data["current_step"]
    if current:
        stalled = " STALLED?" if current["stall"] and current["stall"]["stalled"] else ""
        out.append(f"Current step: {current['id']} ({current['status']}){stalled}")
        if stalled:
            out.append(f"  runbook: {current['stall']['action']}")
    out += ["", "Attempts:"]
    for a in data["attempts"]:
        took = f"{a['duration_s']:.1f}s" if a["duration_s"] is not None else "-"
        flags = []
        if a["cancelled"]:
            flags.append("cancelled")
        if a["reset_at"]:
            flags.append(f"reset {a['reset_at']}")
        out.append(
            f"  {a['kind']} #{a['attempt']}  {a['status']}  started {a['started_at'] or '-'}  "
            f"finished {a['finished_at'] or '-'}  took {took}  by {a['created_by']}"
            + (f"  [{', '.join(flags)}]" if flags else "")
        )
        if a["error"]:
            out.append(f"    error at {a['failed_step'] or '-'}: {a['error']}")
        for s in a["steps"]:
            if s["status"] == "pending":
                continue
            d = f"{s['duration_s']:.2f}s" if s["duration_s"] is not None else ""
            extra = f"  {s['error']}" if s["error"] else ""
            stalled = "  stalled" if s["stalled_at"] else ""
            out.append(
                f"    {s['position']}. {s['id']:<20} {s['status']:<12} {s['attempts']}x {d:>8}"
                f"{stalled}{extra}"
            )
    out += ["", "Operator actions (in order):"]
    if not data["operator_actions"]:
        out.append("  none")
    for a in data["operator_actions"]:
        reason = f" — {a['reason']}" if a["reason"] else ""
        forced = " (forced)" if a["forced"] else ""
        out.append(
            f"  {a['at']}  {a['action']}{forced} by {a['actor']} (attempt {a['attempt']}){reason}"
        )
    out += ["", "Resources:"]
    if not data["resources"]:
        out.append("  none recorded")
    for r in data["resources"]:
        exists = r["exists"]
        state = "exists" if exists is True else "missing" if exists is False else exists
        created = ", ".join(f"{k}={v}" for k, v in r["created"].items())
        out.append(f"  {r['label']}: {state}" + (f" ({r['note']})" if r["note"] else ""))
        out.append(f"    {created}")
    work = data["workloads"]
    out += ["", f"Workloads (driver {work['driver'] or 'not chosen yet'}):"]
    if work["checked_at"] is None:
        out.append("  not checked by the repair loop yet")
    else:
        degraded = "  DEGRADED" if work["degraded"] else ""
        out.append(
            f"  {work['healthy']}/{work['expected']} healthy at {work['checked_at']}{degraded}"
            + (f"  ({work['error']})" if work["error"] else "")
        )
        out.extend(
            f"    {r['name']}: {r['state']}, {r['answer']}"
            + (f", on {r['node']}" if r.get("node") else "")
            for r in work["replicas"]
        )
    for r in data["repairs"]:
        out.append(f"  repaired {r['at']}: {r.get('what')} ({r.get('why')})")
    placement = data.get("placement")
    if placement is not None:
        out.append("  Swarm now" + (f": {placement['error']}" if placement["error"] else ":"))
        out.extend(
            f"    {r['name']}: {r['state']} on {r['node'] or '?'}"
            + (f" at {r['address']}" if r["address"] else "")
            + (f" (task {r['task'][:12]})" if r["task"] else "")
            for r in placement["replicas"]
        )
    for r in data.get("reschedules") or []:
        moves = ", ".join(
            f"{m.get('replica')} {m.get('from_node') or '?'} -> {m.get('to_node') or '?'}"
            for m in r.get("moves") or []
        )
        out.append(f"  rescheduled {r['at']}: {moves or 'tasks moved'}; route {r.get('route')}")
    out += ["", "Same slug, other tenants:"]
    if not data["same_slug"]:
        out.append("  none")
    for o in data["same_slug"]:
        out.append(
            f"  id {o['id']} {o['slug']}-{o['org']} ({o['relation']}) {o['state']}  "
            f"created {o['created_at']}"
            + (f"  decommissioned {o['decommissioned_at']}" if o["decommissioned_at"] else "")
        )
    return "\n".join(out)
