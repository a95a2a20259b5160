"""The audit feed page."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from console import fragments
from tenants.access import role_of
from tenants.filters import audit_filters, audit_query

# Suggestions for the audit feed's type filter.
AUDIT_PREFIXES = [
    "tenant.",
    "tenant.created",
    "tenant.provisioning.*",
    "tenant.provisioning.step_",
    "tenant.provisioning.completed",
    "tenant.provisioning.failed",
    "tenant.provisioning.cancel",
    "tenant.decommission.*",
]


@login_required
@require_GET
def audit_feed(request: HttpRequest) -> HttpResponse:
    filters = audit_filters(request.GET)
    query = audit_query(filters)
    context, regions = fragments.audit_page(**filters)
    context = {
        **context,
        "regions": fragments.as_context(regions),
        "filters": filters,
        "nav": "audit",
        "role": role_of(request.user),
        "ws_url": "/ws/audit/" + (f"?{query}" if query else ""),
        "type_prefixes": AUDIT_PREFIXES,
    }
    return render(request, "audit/list.html", context)
