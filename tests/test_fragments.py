"""The fragments the websocket layer pushes: ids, oob markers, and agreement with the pages."""

import re

import pytest
from django.urls import reverse

from console import fragments
from provisioning.models import AuditEvent
from tests.views_support import activate, create, fail, start

pytestmark = pytest.mark.django_db


def top_level_ids(html: str) -> list[str]:
    """Ids of the elements that carry hx-swap-oob (the ones htmx swaps by id)."""
    return re.findall(r'<[a-z]+ id="([^"]+)"[^>]*hx-swap-oob="true"', html)


def test_detail_fragments_carry_every_live_region(operator):
    tenant = create(operator)
    start(tenant)
    html = fragments.detail_fragments(tenant, role="operator")
    assert top_level_ids(html) == list(fragments.DETAIL_IDS)
    assert 'data-open-dialog="dialog-cancel"' in html
    assert "csrfmiddlewaretoken" not in html  # no request here: CSRF comes from hx-headers


def test_detail_fragments_for_a_viewer_have_no_actions(operator):
    tenant = create(operator)
    html = fragments.detail_fragments(tenant, role="viewer")
    assert "dialog-cancel" not in html
    assert top_level_ids(html) == list(fragments.DETAIL_IDS)


def test_detail_fragments_read_fresh_rows_not_the_instance_passed(operator):
    tenant = create(operator)
    activate(tenant)
    tenant.state = "provisioning"  # a stale instance, as a consumer might hold
    html = fragments.detail_fragments(tenant, role="operator")
    assert "badge--active" in html and "Tenant activated" in html


def test_the_page_and_the_push_render_the_same_regions(client, operator):
    tenant = create(operator)
    fail(tenant)
    client.force_login(operator)
    page = client.get(reverse("tenant-detail", args=["acme"])).content.decode()
    pushed = fragments.detail_fragments(tenant, role="operator")
    for region in ("timeline", "error-card", "actions", "tenant-events", "tenant-header"):
        match = re.search(rf'<(\w+) id="{region}".*?</\1>\n', pushed, re.S)
        assert match and match.group(0) in page, region


def test_list_fragments(operator):
    create(operator, "alpha")
    activate(create(operator, "bravo"))
    html = fragments.list_fragments(role="viewer", state="active")
    assert top_level_ids(html) == ["tenant-table", "drift-banner"]
    assert ">bravo<" in html and ">alpha<" not in html
    # Bad filters never raise.
    assert "alpha" in fragments.list_fragments(role="viewer", state="nope", q="")


def test_banner_fragment_is_an_empty_placeholder_when_nothing_failed(operator):
    assert fragments.banner_fragment(operator).strip() == (
        '<div id="failure-banner" hx-swap-oob="true"></div>'
    )
    fail(create(operator))
    html = fragments.banner_fragment(operator)
    assert top_level_ids(html) == ["failure-banner"] and "Last attempt failed" in html


def test_audit_fragments(operator):
    create(operator, "alpha")
    html = fragments.audit_fragments(type_prefix="tenant.created", tenant="alpha", page=1)
    assert top_level_ids(html) == ["audit-rows"]
    assert "tenant.created" in html
    assert "No events" in fragments.audit_fragments(type_prefix="tenant.decommission.")
    assert 'id="audit-rows"' in fragments.audit_fragments(page=999)


def test_toast_fragments_for_completed_failed_and_cancelled(operator):
    activate(create(operator, "alpha"))
    fail(create(operator, "bravo"))
    fail(create(operator, "charlie"), cancelled=True)
    events = list(AuditEvent.objects.order_by("seq"))
    html = fragments.toast_fragments(events)
    assert html.count('hx-swap-oob="beforeend:#toasts"') == 3
    assert "alpha is active" in html and "toast--success" in html
    assert "Provisioning of bravo failed" in html
    assert "Provisioning of charlie was cancelled" in html
    assert html.count("toast--warning") == 2
    assert html.count('role="status"') == 3
    assert 'id="toast-event-' in html  # so a replayed event shows one toast


def test_toast_fragments_ignore_other_events(operator):
    create(operator)
    assert fragments.toast_fragments(list(AuditEvent.objects.all())) == ""
    assert fragments.toast_fragments([]) == ""
