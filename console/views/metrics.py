"""/metrics: Prometheus text, for a scraper on this host or one holding METRICS_TOKEN."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from provisioning.metrics import DatabaseCollector

REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(DatabaseCollector())

# A request that came through a proxy (nginx on this host) arrives from
# loopback too: it counts as loopback only if no proxy header says otherwise.
PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


def _from_loopback(request: HttpRequest) -> bool:
    if any(header in request.META for header in PROXY_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _has_token(request: HttpRequest) -> bool:
    expected = settings.METRICS_TOKEN
    sent = request.headers.get("Authorization", "")
    if not expected or not sent.startswith("Bearer "):
        return False
    return hmac.compare_digest(sent.removeprefix("Bearer ").encode(), expected.encode())


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not (_from_loopback(request) or _has_token(request)):
        return HttpResponseForbidden(
            "Metrics answer loopback, or Authorization: Bearer $METRICS_TOKEN.\n",
            content_type="text/plain",
        )
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
