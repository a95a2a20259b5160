from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from provisioning.status import tenant_status
from tenants.lookup import find_tenant


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure to answer means unhealthy
        return JsonResponse({"status": "error", "database": str(exc)}, status=503)
    return JsonResponse({"status": "ok"})


@login_required
@require_GET
def tenant_status_api(request: HttpRequest, slug: str) -> JsonResponse:
    tenant = find_tenant(slug)
    if tenant is None:
        raise Http404("No tenant with that slug")
    return JsonResponse(tenant_status(tenant))
