"""The tenants list: each tenant's row, and the user's failure banner."""

from __future__ import annotations

from django.db.models import Q

from console.presenters.health import health_of
from console.presenters.runs import Snapshot, progress_view, step_summary
from provisioning import reconcile
from provisioning.failures import recent_failures
from provisioning.models import ProvisioningRun, StepRun
from tenants.filters import ALL
from tenants.models import Tenant

LIST_LIMIT = 200


def banner_context(user) -> dict:
    """The "Last attempt failed" banner: the user's latest failure (24 h), unless dismissed."""
    failures, degraded = recent_failures(user)
    failure = failures[0] if failures and not failures[0]["dismissed"] else None
    return {"failure": failure, "banner_degraded": degraded}


def tenant_rows(*, state: str = "", q: str = "") -> dict:
    """The tenants list: at most LIST_LIMIT rows, each with its current step and
    workload health, in 4 queries."""
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
    health = health_of(tenants)
    rows = []
    for tenant in tenants:
        run = runs.get(tenant.pk)
        snap = Snapshot.of(tenant, run, steps.get(run.pk, []) if run else [])
        rows.append(
            {
                "tenant": tenant,
                "summary": step_summary(snap),
                "progress": progress_view(snap),
                "health": health[tenant.pk],
            }
        )
    return {"rows": rows, "total": total, "shown": len(rows), "state": state, "q": q}


def drift_context() -> dict:
    """The drift banner: what the reconcile schedule found last (stored, not checked here)."""
    return {"drift": reconcile.banner_context()["drift"]}
