"""The audit feed: a page of events, and its pagination links."""

from __future__ import annotations

from django.core.paginator import Paginator

from console.presenters.events import event_row
from provisioning.models import AuditEvent
from tenants.filters import audit_query

AUDIT_PAGE_SIZE = 50


def audit_context(*, type_prefix: str = "", tenant: str = "", page: int = 1) -> dict:
    events = AuditEvent.objects.select_related("tenant").order_by("-seq")
    if type_prefix:
        events = events.filter(type__startswith=type_prefix)
    if tenant:
        events = events.filter(tenant__slug=tenant)
    paginator = Paginator(events, AUDIT_PAGE_SIZE)
    page_obj = paginator.get_page(page)
    filters = {"type_prefix": type_prefix, "tenant": tenant}

    def link(number: int) -> str:
        return "?" + audit_query(filters, page=number)

    window = range(max(1, page_obj.number - 2), min(paginator.num_pages, page_obj.number + 2) + 1)
    return {
        "page_obj": page_obj,
        "prev_link": link(page_obj.number - 1) if page_obj.has_previous() else "",
        "next_link": link(page_obj.number + 1) if page_obj.has_next() else "",
        "page_links": [(n, link(n), n == page_obj.number) for n in window],
        "events": [event_row(e) for e in page_obj.object_list],
        "type_prefix": type_prefix,
        "tenant_slug": tenant,
    }
