"""HTML fragments for htmx: the pages' live regions, rendered from the same partials.

The websocket layer calls these (through ``database_sync_to_async``) on
every (re)connect and on every change; the action views return them to htmx.
Each returns top-level elements that carry a stable ``id`` and
``hx-swap-oob``, so htmx swaps each one in by id wherever it is on the page.
They take no request: a push has none, so nothing here may depend on one
(CSRF reaches htmx through ``hx-headers`` on <body> instead).
"""

from __future__ import annotations

from collections.abc import Iterable

from django.template.loader import render_to_string
from django.urls import reverse

from console.presenters.audit import audit_context
from console.presenters.detail import detail_context
from console.presenters.tenant_list import banner_context, tenant_rows
from provisioning.models import AuditEvent
from tenants.filters import audit_filters, list_filters
from tenants.models import Tenant

# Element ids, in the order the fragments are emitted.
DETAIL_PARTIALS = {
    "tenant-header": "tenants/_tenant_header.html",
    "step-line": "provisioning/_step_line.html",
    "step-elapsed": "provisioning/_step_elapsed.html",
    "step-progress": "provisioning/_step_progress.html",
    "error-card": "provisioning/_error_card.html",
    "timeline": "provisioning/_timeline.html",
    "actions": "provisioning/_actions.html",
    "tenant-events": "provisioning/_events.html",
}
DETAIL_IDS = tuple(DETAIL_PARTIALS)
LIST_IDS = ("tenant-table", "drift-banner")
BANNER_IDS = ("failure-banner",)
AUDIT_IDS = ("audit-rows",)

TOAST_EVENTS = {
    "tenant.provisioning.completed": "success",
    "tenant.provisioning.failed": "warning",
    "tenant.provisioning.cancelled": "warning",
}


def _role(role: str) -> str:
    return "operator" if role == "operator" else "viewer"


def detail_fragments(tenant: Tenant, *, role: str) -> str:
    """Every live region of the tenant's detail page (ids: DETAIL_IDS)."""
    context = detail_context(tenant, _role(role))
    return "".join(render_to_string(name, context) for name in DETAIL_PARTIALS.values())


def list_fragments(*, role: str, state: str = "", q: str = "") -> str:
    """The tenants table (id ``tenant-table``) for these filters, and ``#drift-banner``."""
    filters = list_filters({"state": state, "q": q})
    context = {**tenant_rows(**filters), "role": _role(role)}
    # ``#drift-banner``: what the reconcile schedule found last (it loads its own data).
    return render_to_string("tenants/_tenant_table.html", context) + render_to_string(
        "tenants/_drift_banner.html"
    )


def banner_fragment(user) -> str:
    """``#failure-banner``: the user's latest failure in 24 h, or an empty placeholder."""
    return render_to_string("tenants/_failure_banner.html", banner_context(user))


def audit_fragments(*, type_prefix: str = "", tenant: str = "", page: int = 1) -> str:
    """The audit feed's rows and pagination (id ``audit-rows``)."""
    filters = audit_filters({"type": type_prefix, "tenant": tenant, "page": str(page)})
    return render_to_string("audit/_audit_rows.html", audit_context(**filters))


def toast(level: str, text: str, *, link: str = "", key: str = "") -> str:
    """One toast, wrapped to be appended to ``#toasts`` out of band."""
    return render_to_string(
        "_toast_oob.html", {"level": level, "text": text, "link": link, "key": key}
    )


def toast_fragments(events: Iterable[AuditEvent]) -> str:
    """Toasts for finished provisioning runs among ``events``; "" when there are none."""
    html = []
    for event in events:
        level = TOAST_EVENTS.get(event.type)
        if level is None or event.tenant_id is None:
            continue
        slug = event.tenant.slug
        if event.type.endswith(".completed"):
            text = f"{slug} is active"
        elif event.type.endswith(".cancelled"):
            text = f"Provisioning of {slug} was cancelled"
        else:
            text = f"Provisioning of {slug} failed"
        html.append(
            toast(level, text, link=reverse("tenant-detail", args=[slug]), key=f"event-{event.seq}")
        )
    return "".join(html)
