"""HTML fragments for htmx: the pages' live regions, rendered from the same partials.

The page views, the htmx action responses and the websocket pushes all render
the regions here, so a pushed fragment is the same HTML a reload would give.
Each region is a top-level element with a stable ``id`` (and ``hx-swap-oob``),
swapped in by id wherever it is on the page. A region that is a list (the
timeline's steps, the events, the tenants table's rows, the audit rows) also
carries its items, so that a push can send only the items that changed
(``changes``). Nothing here takes a request: a push has none (CSRF reaches
htmx through ``hx-headers`` on <body> instead).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.safestring import mark_safe

from console.presenters.audit import audit_context
from console.presenters.detail import detail_context
from console.presenters.tenant_list import banner_context, drift_context, tenant_rows
from tenants.filters import audit_filters, list_filters
from tenants.models import Tenant

TOAST_EVENTS = {
    "tenant.provisioning.completed": "success",
    "tenant.provisioning.failed": "warning",
    "tenant.provisioning.cancelled": "warning",
}


@dataclass(frozen=True)
class Region:
    """One live region of a page.

    ``items`` are (id, HTML) pairs of the list inside it, in page order, each
    a substring of ``html``; ``container`` is the id of the element that holds
    them, and ``container_tag`` its tag, when new items arrive on top (events).
    ``arrivals`` go out with a push in which their item is new, never with a
    full page: a toast says "acme is active" to the tabs that saw it happen.
    """

    id: str
    html: str
    items: tuple[tuple[str, str], ...] = ()
    container: str = ""
    container_tag: str = ""
    # Item id -> HTML sent once, with a push that brings that item (a toast).
    arrivals: tuple[tuple[str, str], ...] = ()

    def frame(self) -> str:
        """The region without its items: equal frames mean only items changed."""
        frame = self.html
        for _item_id, item in self.items:
            frame = frame.replace(item, "", 1)
        return frame


Page = Sequence[Region]


def full(page: Page) -> str:
    return "".join(region.html for region in page)


@dataclass(frozen=True)
class Changes:
    """A push: ``flow`` (regions and list items, one frame) and ``table_frames``.

    Table rows go in frames of their own: an HTML parser that meets a bare
    ``<tr>`` or ``<tbody>`` switches to table parsing for the rest of the
    frame, and would then take a following ``<div>``'s form apart.
    """

    flow: str = ""
    table_frames: tuple[str, ...] = ()

    def frames(self, extra: str = "") -> list[str]:
        return [f for f in (self.flow + extra, *self.table_frames) if f]

    def __bool__(self) -> bool:
        return bool(self.flow or self.table_frames)


def changes(previous: Page | None, current: Page) -> Changes:
    """What turns a page showing ``previous`` into ``current``: the regions, or items, that differ.

    An item that changed is sent alone (the websocket swaps a top-level element
    by its id); new items on top of a list are prepended into its container and
    those that fell off its end deleted; anything else that changed in a region
    sends the whole region.
    """
    if previous is None:
        return Changes(full(current))
    before = {region.id: region for region in previous}
    flow: list[str] = []
    tables: list[str] = []
    arrived: list[str] = []
    for region in current:
        old = before.get(region.id)
        if old is not None and region.arrivals:
            shown = {item_id for item_id, _ in old.items}
            arrived += [html for item_id, html in region.arrivals if item_id not in shown]
        if old is None or not region.items or old.frame() != region.frame():
            if old is None or old.html != region.html:
                flow.append(region.html)
            continue
        if old.html == region.html:
            continue
        if region.container_tag == "tbody":
            tables.extend(f for f in _item_changes(old, region) if f)
        else:
            flow.append("".join(_item_changes(old, region)))
    return Changes("".join(flow + arrived), tuple(tables))


def _item_changes(old: Region, new: Region) -> tuple[str, str]:
    """(items replaced by id, items prepended and deleted): two frames for table rows."""
    old_items, new_items = dict(old.items), dict(new.items)
    old_ids, new_ids = [i for i, _ in old.items], [i for i, _ in new.items]
    if old_ids == new_ids:
        return "".join(html for item_id, html in new.items if old_items[item_id] != html), ""
    added = [i for i in new_ids if i not in old_items]
    kept = new_ids[len(added) :]
    if not new.container or new_ids[: len(added)] != added or kept != old_ids[: len(kept)]:
        return new.html, ""  # reordered, or removed from the middle: the whole region
    replaced = "".join(new_items[i] for i in kept if old_items[i] != new_items[i])
    tag = new.container_tag
    moved = [
        f'<{tag} hx-swap-oob="afterbegin:#{new.container}">'
        + "".join(new_items[i] for i in added)
        + f"</{tag}>"
    ]
    moved += [f'<template id="{i}" hx-swap-oob="delete"></template>' for i in old_ids[len(kept) :]]
    return replaced, "".join(moved)


def _role(role: str) -> str:
    return "operator" if role == "operator" else "viewer"


def _render(template: str, context: dict) -> str:
    return render_to_string(template, context)


def _list_region(
    region_id: str,
    template: str,
    item_template: str,
    item_id,
    items: Iterable,
    context: dict,
    item_name: str,
    *,
    container: str = "",
    container_tag: str = "",
    cache_key=None,
) -> Region:
    """Render each item once, then the region around the rendered items.

    ``cache_key(item)``: items whose HTML never changes (audit events are
    append-only) are rendered once per process and kept by that key.
    """
    rendered = []
    for item in items:
        key = cache_key(item) if cache_key else None
        html = _ITEM_CACHE.get(key) if key else None
        if html is None:
            html = _render(item_template, {**context, item_name: item})
            if key:
                _ITEM_CACHE[key] = html
                if len(_ITEM_CACHE) > ITEM_CACHE_SIZE:
                    _ITEM_CACHE.popitem(last=False)
        rendered.append((item_id(item), html))
    html = _render(template, {**context, "rendered_items": [mark_safe(h) for _, h in rendered]})
    return Region(region_id, html, tuple(rendered), container, container_tag)


# Rendered rows (audit events, step rows) by everything they show; oldest dropped first.
ITEM_CACHE_SIZE = 5000
_ITEM_CACHE: OrderedDict[tuple, str] = OrderedDict()


def _step_row_key(row) -> tuple:
    """Everything a step row shows (its log lines are append-only, so their ids stand for them)."""
    values = tuple(
        getattr(row, f.name)
        for f in dataclasses.fields(row)
        if f.name not in ("step", "replicas", "log_lines")
    )
    replicas = tuple(tuple(sorted(replica.items())) for replica in row.replicas)
    return ("step", row.step.pk, values, replicas, tuple(line.pk for line in row.log_lines))


def _event_key(template: str):
    def key(event: dict) -> tuple:
        tenant = event["tenant"]
        return (template, event["seq"], event["type"], event["created_at"], event["actor"],
                event["summary"], tenant.slug if tenant else "")  # fmt: skip

    return key


# ---------------------------------------------------------------- detail page

DETAIL_SIMPLE = {
    "tenant-header": "tenants/_tenant_header.html",
    "step-line": "provisioning/_step_line.html",
    "step-elapsed": "provisioning/_step_elapsed.html",
    "step-progress": "provisioning/_step_progress.html",
    "error-card": "provisioning/_error_card.html",
}
DETAIL_IDS = (*DETAIL_SIMPLE, "timeline", "actions", "tenant-events-count", "tenant-events")


def detail_page(tenant: Tenant, *, role: str) -> tuple[dict, list[Region]]:
    """The detail page's context and its live regions (ids: DETAIL_IDS), read fresh."""
    context = detail_context(tenant, _role(role))
    regions = [Region(rid, _render(name, context)) for rid, name in DETAIL_SIMPLE.items()]
    regions.append(
        _list_region(
            "timeline",
            "provisioning/_timeline.html",
            "provisioning/_timeline.html#step-row",
            lambda row: f"step-{row.step.step_id}",
            context["steps"],
            context,
            "row",
            cache_key=_step_row_key,
        )
    )
    regions.append(Region("actions", _render("provisioning/_actions.html", context)))
    regions.append(
        Region("tenant-events-count", _render("provisioning/_events.html#events-count", context))
    )
    regions.append(
        _list_region(
            "tenant-events",
            "provisioning/_events.html",
            "provisioning/_events.html#event-row",
            lambda event: f"event-{event['seq']}",
            context["events"],
            context,
            "event",
            container="tenant-events-list",
            container_tag="ol",
            cache_key=_event_key("detail"),
        )
    )
    events = regions[-1]
    toasts = tuple(
        (f"event-{event['seq']}", html)
        for event in context["events"]
        if (html := event_toast(event["type"], event["seq"], context["tenant"].slug))
    )
    regions[-1] = Region(
        events.id, events.html, events.items, events.container, events.container_tag, toasts
    )
    return context, regions


def detail_fragments(tenant: Tenant, *, role: str) -> str:
    """Every live region of the tenant's detail page (ids: DETAIL_IDS)."""
    return full(detail_page(tenant, role=role)[1])


# ---------------------------------------------------------------- tenants list


def list_page(*, role: str, state: str = "", q: str = "") -> tuple[dict, list[Region]]:
    """The tenants table (``tenant-table``, a row each) for these filters, and ``#drift-banner``."""
    filters = list_filters({"state": state, "q": q})
    context = {**tenant_rows(**filters), **drift_context(), "role": _role(role)}
    table = _list_region(
        "tenant-table",
        "tenants/_tenant_table.html",
        "tenants/_tenant_table.html#tenant-row",
        lambda row: f"tenant-row-{row['tenant'].pk}",
        context["rows"],
        context,
        "row",
        container="tenant-table-body",
        container_tag="tbody",
    )
    drift = Region("drift-banner", _render("tenants/_drift_banner.html", context))
    return context, [table, drift]


def list_fragments(*, role: str, state: str = "", q: str = "") -> str:
    return full(list_page(role=role, state=state, q=q)[1])


def banner_page(user) -> list[Region]:
    """``#failure-banner``: the user's latest failure in 24 h, or an empty placeholder."""
    return [Region("failure-banner", _render("tenants/_failure_banner.html", banner_context(user)))]


def banner_fragment(user) -> str:
    return full(banner_page(user))


# ---------------------------------------------------------------- audit feed


def audit_page(*, type_prefix: str = "", tenant: str = "", page: int = 1) -> tuple[dict, list]:
    """The audit feed's rows (``audit-rows``, newest on top) and its pagination."""
    filters = audit_filters({"type": type_prefix, "tenant": tenant, "page": str(page)})
    context = audit_context(**filters)
    rows = _list_region(
        "audit-rows",
        "audit/_audit_rows.html",
        "audit/_audit_rows.html#audit-row",
        lambda event: f"audit-{event['seq']}",
        context["events"],
        context,
        "event",
        container="audit-rows-body",
        container_tag="tbody",
        cache_key=_event_key("audit"),
    )
    pagination = Region("audit-pagination", _render("audit/_audit_rows.html#pagination", context))
    return context, [rows, pagination]


def audit_fragments(*, type_prefix: str = "", tenant: str = "", page: int = 1) -> str:
    return full(audit_page(type_prefix=type_prefix, tenant=tenant, page=page)[1])


# ---------------------------------------------------------------- toasts


def toast(level: str, text: str, *, link: str = "", key: str = "") -> str:
    """One toast, wrapped to be appended to ``#toasts`` out of band."""
    return render_to_string(
        "_toast_oob.html", {"level": level, "text": text, "link": link, "key": key}
    )


def event_toast(event_type: str, seq: int, slug: str) -> str:
    """The toast for a finished provisioning run's event; "" for other events."""
    level = TOAST_EVENTS.get(event_type)
    if level is None:
        return ""
    if event_type.endswith(".completed"):
        text = f"{slug} is active"
    elif event_type.endswith(".cancelled"):
        text = f"Provisioning of {slug} was cancelled"
    else:
        text = f"Provisioning of {slug} failed"
    return toast(level, text, link=reverse("tenant-detail", args=[slug]), key=f"event-{seq}")


def as_context(regions: Iterable[Region]) -> dict:
    """``regions`` for a page template: ``{{ regions.step_line }}`` is ``#step-line``."""
    return {region.id.replace("-", "_"): mark_safe(region.html) for region in regions}
