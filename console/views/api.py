"""JSON endpoints: health, the status JSON, the user's recent failures."""

import logging

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from provisioning.failures import (
    DEFAULT_HOURS,
    DEFAULT_LIMIT,
    MAX_HOURS,
    MAX_LIMIT,
    recent_failures,
)
from provisioning.status import tenant_status
from tenants.access import get_tenant_for_user
from tenants.filters import whole_number

log = logging.getLogger(__name__)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # any failure to answer means unhealthy
        # The error names the database's host, port and user: for the log,
        # never for this page, which answers anyone without sign-in.
        log.warning("healthz: database unavailable", exc_info=True)
        return JsonResponse({"status": "error", "database": "unavailable"}, status=503)
    return JsonResponse({"status": "ok"})


@login_required
@require_GET
def tenant_status_api(request: HttpRequest, slug: str) -> JsonResponse:
    return JsonResponse(tenant_status(get_tenant_for_user(request, slug)))


@login_required
@require_GET
def recent_failures_api(request: HttpRequest) -> JsonResponse:
    """The signed-in user's latest failed attempts: what the "Last attempt failed" banner shows.

    ``hours`` (default 24, at most 168) and ``limit`` (default 1, at most 20);
    a bad value means its default. A failing query answers ``degraded: true``
    with no failures rather than an error, so the banner just stays away.
    """
    hours = whole_number(request.GET.get("hours"), default=DEFAULT_HOURS, maximum=MAX_HOURS)
    limit = whole_number(request.GET.get("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    failures, degraded = recent_failures(request.user, hours=hours, limit=limit)
    return JsonResponse(
        {"degraded": degraded, "hours": hours, "limit": limit, "failures": failures}
    )


def api_v1_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Any other path under /api/v1/: the API's own JSON 404, not the console's page."""
    return JsonResponse({"error": "No such endpoint; see /api/v1/openapi.json."}, status=404)
