from __future__ import annotations

from tenants.models import Tenant


def find_tenant(slug: str) -> Tenant | None:
    """The live tenant with this slug, or else the latest decommissioned one.

    A slug is unique among tenants that are not decommissioned, so at most one
    live tenant matches; history keeps earlier, decommissioned holders.
    """
    tenants = Tenant.objects.select_related("plan").filter(slug=slug)
    live = tenants.exclude(state=Tenant.State.DECOMMISSIONED).first()
    return live or tenants.order_by("-created_at", "-id").first()
