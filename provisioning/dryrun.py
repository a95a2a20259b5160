"""Dry run: the validate step's checks, and what provisioning would create.

``check(...)`` is what ``provision_tenant ... --dry-run`` and the create
form's "Check" button run. It calls ``tenants.validation.validate_request``
(the same check the ``validate`` step makes) and describes the schema,
network, containers, route, identity and emails the saga would create. It
writes nothing: no tenant, run or event, and no sequence value is consumed.

Names carry the tenant's id, which only creation assigns; the description
uses the id the next tenant would most likely get (``predicted_id``), and
says so.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection

from provisioning.drivers.base import network_name, replica_name
from provisioning.steps import STEPS
from provisioning.steps.schema import TABLES
from tenants.models import Tenant
from tenants.validation import TenantRequest, validate_request

EMAIL_KINDS = ("welcome", "console", "onboarding")


def predicted_id() -> int | None:
    """The id the next tenant would most likely get (read without consuming the sequence)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_serial_sequence('tenants_tenant', 'id')")
            sequence = cursor.fetchone()[0]
            if not sequence:
                return None
            cursor.execute(f"SELECT last_value, is_called FROM {sequence}")  # noqa: S608
            last, called = cursor.fetchone()
    except Exception:
        return None
    return last + 1 if called else last


def describe(request: TenantRequest) -> dict:
    """What provisioning ``request`` would create, by the saga's own naming rules."""
    plan = request.plan
    pid = predicted_id()
    tenant = Tenant(pk=pid or 0, slug=request.slug, org=request.org, plan=plan)
    key = tenant.key
    earlier = [
        {"id": t.pk, "org": t.org, "state": t.state, "created_at": t.created_at.isoformat()}
        for t in Tenant.objects.filter(slug=request.slug).order_by("created_at", "id")
    ]
    return {
        "ok": True,
        "dry_run": True,
        "slug": request.slug,
        "org": request.org,
        "plan": plan.name,
        "admin_email": request.admin_email,
        "predicted_id": pid,
        "id_note": "the tenant id is assigned at creation; names below use the predicted id",
        "would_create": {
            "schema": tenant.schema_name,
            "tables": sorted(TABLES),
            "identity": {"organization": request.org, "admin_email": request.admin_email},
            "network": network_name(key),
            "containers": [replica_name(key, i) for i in range(1, plan.replicas + 1)],
            "replicas": plan.replicas,
            "image": plan.image,
            "memory_mb": plan.memory_mb,
            "route_hostname": tenant.hostname,
            "url": tenant.url,
            "emails": [{"kind": kind, "to": request.admin_email} for kind in EMAIL_KINDS],
        },
        "steps": [{"id": step.id, "label": step.label} for step in STEPS],
        "same_slug_before": earlier,
        "driver": settings.WORKLOAD_DRIVER,
    }


def check(slug: str, org: str, plan: str, admin_email: str, *, user=None) -> dict:
    """Validate as the ``validate`` step does; raises ValidationError, else describes."""
    return describe(validate_request(slug, org, plan, admin_email, user=user))


def as_text(plan: dict) -> str:
    w = plan["would_create"]
    lines = [
        f"dry run: {plan['slug']}-{plan['org']} on plan {plan['plan']} passes validation; "
        "nothing was created",
        f"tenant id        {plan['predicted_id']} (predicted; assigned at creation)",
        f"schema           {w['schema']} (tables {', '.join(w['tables'])})",
        f"identity         organization {w['identity']['organization']}, first admin "
        f"{w['identity']['admin_email']}",
        f"network          {w['network']}",
        f"containers       {', '.join(w['containers'])} ({w['replicas']} x {w['image']}, "
        f"{w['memory_mb']} MB)",
        f"route            {w['route_hostname']} -> {w['url']}",
        f"emails           {', '.join(e['kind'] for e in w['emails'])} to {plan['admin_email']}",
    ]
    if plan["same_slug_before"]:
        earlier = ", ".join(
            f"id {t['id']} ({t['org']}, {t['state']})" for t in plan["same_slug_before"]
        )
        lines.append(f"slug used before  {earlier}")
    return "\n".join(lines)
