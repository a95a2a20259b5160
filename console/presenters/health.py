"""An active tenant's workload health, as the pages show it: the Degraded badge and live
replica chips, from what the repair loop last saw (``WorkloadHealth``)."""

from __future__ import annotations

from provisioning.models import WorkloadHealth
from tenants.models import Tenant


def health_view(tenant: Tenant, health: WorkloadHealth | None) -> dict | None:
    """None unless the tenant is active and the loop has looked at it."""
    if tenant.state != Tenant.State.ACTIVE or health is None or health.checked_at is None:
        return None
    chips = []
    for replica in health.replicas or []:
        state, answer = replica.get("state", "unknown"), replica.get("answer", "")
        if health.error:
            text, css = "unknown", "muted"
        elif replica.get("healthy"):
            text, css = "healthy", "ok"
        elif state == "running":
            text, css = f"not answering ({answer})", "warn"
        else:
            text, css = state, "bad"
        chips.append(
            {
                "name": replica.get("name", "?"),
                "state": text,
                "css": css,
                "node": replica.get("node", ""),  # the swarm node running it
            }
        )
    title = f"{health.healthy} of {health.expected} replicas healthy"
    if health.error:
        title += f": {health.error}"
    return {
        "degraded": health.degraded,
        "healthy": health.healthy,
        "expected": health.expected,
        "title": title,
        "since": health.degraded_since,
        "checked_at": health.checked_at,
        "replicas": chips,
    }


def health_of(tenants: list[Tenant]) -> dict[int, dict | None]:
    """``health_view`` of each tenant, by id, in one query."""
    rows = {h.tenant_id: h for h in WorkloadHealth.objects.filter(tenant__in=tenants)}
    return {t.pk: health_view(t, rows.get(t.pk)) for t in tenants}
