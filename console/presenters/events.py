"""Audit events in words: one line and a tone per event, for the detail page and the feed."""

from __future__ import annotations

from console.presenters.runs import fmt_duration
from provisioning.models import AuditEvent
from provisioning.steps import TOTAL, label_of


def summarize_event(event: AuditEvent) -> str:
    text = _summary(event)
    token = (event.details or {}).get("api_token")
    return f"{text} (through API token {token})" if token else text


def _summary(event: AuditEvent) -> str:
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
    if kind == "tenant.workload.rescheduled":
        moves = [
            f"{m.get('replica', '?')} {m.get('from_node') or '?'} → {m.get('to_node') or '?'}"
            for m in d.get("moves") or []
            if isinstance(m, dict)
        ]
        route = ", ".join(d.get("route") or []) or "unchanged"
        what = "; ".join(moves) if moves else "tasks moved"
        return f"Swarm rescheduled {what}; route now {route}"[:300]
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
