from __future__ import annotations

from tenants.models import Tenant
from tenants.validation import is_label


def find_tenant(slug: str) -> Tenant | None:
    """The live tenant with this slug, or else the latest decommissioned one.

    A slug is unique among tenants that are not decommissioned, so at most one
    live tenant matches; history keeps earlier, decommissioned holders. A
    value that cannot be a slug (a NUL, a look-alike, 10k characters) finds
    nothing without a query: every page, API, socket and command looks
    tenants up here, so none of them can pass PostgreSQL what it refuses.
    """
    if not is_label(slug):
        return None
    tenants = Tenant.objects.select_related("plan").filter(slug=slug)
    live = tenants.exclude(state=Tenant.State.DECOMMISSIONED).first()
    return live or tenants.order_by("-created_at", "-id").first()
