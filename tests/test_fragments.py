"""The fragments the websocket layer pushes: ids, oob markers, and agreement with the pages."""

import re
from html.parser import HTMLParser

import pytest
from django.urls import reverse
from django.utils import timezone

from console import fragments
from provisioning.audit import record_event
from provisioning.models import StepRun
from tests.views_support import activate, create, fail, start

pytestmark = pytest.mark.django_db


def top_level_ids(html: str) -> list[str]:
    """Ids of the elements that carry hx-swap-oob (the ones htmx swaps by id)."""
    return re.findall(r'<[a-z]+ id="([^"]+)"[^>]*hx-swap-oob="morph"', html)


def test_detail_fragments_carry_every_live_region(operator):
    tenant = create(operator)
    start(tenant)
    html = fragments.detail_fragments(tenant, role="operator")
    assert top_level_ids(html) == list(fragments.DETAIL_IDS)
    assert 'commandfor="dialog-cancel" command="show-modal"' in html
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
        '<div id="failure-banner" hx-swap-oob="morph"></div>'
    )
    fail(create(operator))
    html = fragments.banner_fragment(operator)
    assert top_level_ids(html) == ["failure-banner"] and "Last attempt failed" in html


def test_audit_fragments(operator):
    create(operator, "alpha")
    html = fragments.audit_fragments(type_prefix="tenant.created", tenant="alpha", page=1)
    assert top_level_ids(html) == ["audit-rows", "audit-pagination"]
    assert "tenant.created" in html
    assert "No events" in fragments.audit_fragments(type_prefix="tenant.decommission.")
    assert 'id="audit-rows"' in fragments.audit_fragments(page=999)


def test_a_push_that_brings_a_finished_runs_event_brings_its_toast(operator):
    toasts = {}
    for slug, finish, kwargs in (
        ("alpha", activate, {}),
        ("bravo", fail, {}),
        ("charlie", fail, {"cancelled": True}),
    ):
        tenant = create(operator, slug)
        _, before = fragments.detail_page(tenant, role="operator")
        finish(tenant, **kwargs)
        _, after = fragments.detail_page(tenant, role="operator")
        toasts[slug] = fragments.changes(before, after).flow
        # Not with the full page a socket gets on connect, nor twice.
        assert 'id="toast-event-' not in fragments.full(after)
        assert 'id="toast-event-' not in fragments.changes(after, after).flow
    assert "alpha is active" in toasts["alpha"] and "toast--success" in toasts["alpha"]
    assert "Provisioning of bravo failed" in toasts["bravo"] and "toast--warning" in toasts["bravo"]
    assert "Provisioning of charlie was cancelled" in toasts["charlie"]
    for html in toasts.values():
        assert html.count('hx-swap-oob="beforeend:#toasts"') == 1
        assert 'role="status"' in html and 'id="toast-event-' in html


def test_other_events_bring_no_toast(operator):
    tenant = create(operator)
    _, before = fragments.detail_page(tenant, role="operator")
    start(tenant)
    record_event("tenant.provisioning.step_started", tenant=tenant, details={"step": "validate"})
    _, after = fragments.detail_page(tenant, role="operator")
    assert "toast" not in fragments.changes(before, after).flow


# ---------------------------------------------------------------- pushes of what changed


class _TopLevel(HTMLParser):
    VOID = {"br", "img", "input", "meta", "link", "hr", "source", "wbr"}

    def __init__(self):
        super().__init__()
        self.depth, self.ids = 0, []

    def handle_starttag(self, tag, attrs):
        if self.depth == 0:
            self.ids.append(dict(attrs).get("id", ""))
        if tag not in self.VOID:
            self.depth += 1

    def handle_endtag(self, tag):
        self.depth -= 1


def ids_in(html: str) -> list[str]:
    """Ids of the top-level elements of a push: what the websocket extension swaps, by id."""
    parser = _TopLevel()
    parser.feed(html)
    return parser.ids


def test_a_step_change_sends_its_row_and_the_lines_it_moves_within_2_kb(operator):
    tenant = create(operator)
    run = start(tenant, "allocate_network")
    _, before = fragments.detail_page(tenant, role="operator")
    # As the ledger records it: the step done (one transaction), the next one started (another).
    run.steps.filter(step_id="allocate_network").update(
        status=StepRun.Status.SUCCEEDED, finished_at=timezone.now()
    )
    record_event("tenant.provisioning.step_completed", tenant=tenant, details={"step": "x"})
    _, done = fragments.detail_page(tenant, role="operator")
    run.steps.filter(step_id="seed_schema").update(
        status=StepRun.Status.RUNNING, attempts=1, started_at=timezone.now()
    )
    record_event(
        "tenant.provisioning.step_started",
        tenant=tenant,
        details={"step": "seed_schema", "position": 5},
    )
    _, started = fragments.detail_page(tenant, role="operator")
    for old, new, row in ((before, done, "allocate_network"), (done, started, "seed_schema")):
        pushed = fragments.changes(old, new).flow
        assert len(pushed.encode()) <= 2048, len(pushed.encode())
        assert ids_in(pushed).count(f"step-{row}") == 1
        assert not {"step-validate", "timeline", "tenant-events", "tenant-header"} & set(
            ids_in(pushed)
        )
        assert 'hx-swap-oob="afterbegin:#tenant-events-list"' in pushed  # the newest event
    assert 'id="step-line"' in fragments.changes(done, started).flow
    assert not fragments.changes(started, started)


def test_events_that_fall_off_the_end_are_deleted(operator):
    tenant = create(operator)
    for _ in range(40):
        record_event("tenant.provisioning.reset", tenant=tenant, details={"attempt": 1})
    _, before = fragments.detail_page(tenant, role="operator")
    newest = record_event("tenant.provisioning.reset", tenant=tenant, details={"attempt": 1})
    _, after = fragments.detail_page(tenant, role="operator")
    pushed = fragments.changes(before, after).flow
    shown = [item_id for item_id, _ in after[-1].items]
    gone = [item_id for item_id, _ in before[-1].items if item_id not in shown]
    assert shown[0] == f"event-{newest.seq}" and len(gone) == 1
    assert f'<template id="{gone[0]}" hx-swap-oob="delete"></template>' in pushed
    assert 'id="tenant-events-count"' in pushed


def test_a_structural_change_sends_the_whole_region(operator):
    tenant = create(operator)
    start(tenant, "mark_active")
    _, before = fragments.detail_page(tenant, role="operator")
    activate(tenant)  # the "Tenant activated" row appears after the steps
    _, after = fragments.detail_page(tenant, role="operator")
    assert 'id="timeline"' in fragments.changes(before, after).flow


def test_a_list_row_change_sends_that_row_only_in_a_frame_of_its_own(operator):
    alpha, bravo = create(operator, "alpha"), create(operator, "bravo")
    start(alpha)
    _, before = fragments.list_page(role="operator")
    start(bravo)
    _, after = fragments.list_page(role="operator")
    pushed = fragments.changes(before, after)
    # Rows travel alone: a parser that meets <tr> parses the rest of its frame as a table.
    assert pushed.flow == ""
    assert [ids_in(frame) for frame in pushed.table_frames] == [[f"tenant-row-{bravo.pk}"]]
    charlie = create(operator, "charlie")
    _, newer = fragments.list_page(role="operator")
    (frame,) = fragments.changes(after, newer).table_frames
    assert frame.startswith('<tbody hx-swap-oob="afterbegin:#tenant-table-body">')
    assert f'id="tenant-row-{charlie.pk}"' in frame and 'id="tenant-table"' not in frame
