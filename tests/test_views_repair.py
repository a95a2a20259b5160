"""The Degraded badge on the list and detail pages, and the operators' Repair action.

The rows are written as the repair loop leaves them (``WorkloadHealth``); the
loop itself runs for real in tests/test_repair.py and tests/test_engine_restart.py.
A Repair through the page here finds a tenant whose workloads are not on any
driver (no driver recorded, the process driver chosen, nothing running), so
it really recreates them as process replicas.
"""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from provisioning.drivers import get_driver
from provisioning.models import AuditEvent, WorkloadHealth
from tests.views_support import activate, create

pytestmark = pytest.mark.django_db


def degraded(tenant, healthy=1, expected=2):
    replicas = [
        {"name": f"tpc-{tenant.key}-r1", "index": 1, "state": "running", "healthy": True,
         "failures": 0, "answer": "200 ok"},
        {"name": f"tpc-{tenant.key}-r2", "index": 2, "state": "exited", "healthy": False,
         "failures": 0, "answer": "exited"},
    ][:expected]  # fmt: skip
    now = timezone.now()
    return WorkloadHealth.objects.update_or_create(
        tenant=tenant,
        defaults={
            "expected": expected,
            "healthy": healthy,
            "replicas": replicas,
            "checked_at": now,
            "degraded_since": now if healthy < expected else None,
        },
    )[0]


def page(client, user, path):
    client.force_login(user)
    return client.get(path).content.decode()


def test_a_degraded_active_tenant_shows_the_badge_on_the_list_and_the_detail_page(client, operator):
    tenant = create(operator, plan="pro")
    activate(tenant)
    degraded(tenant)
    listing = page(client, operator, "/")
    assert "badge--degraded" in listing and "1 of 2 replicas healthy" in listing
    detail = page(client, operator, f"/tenants/{tenant.slug}/")
    assert "badge--degraded" in detail
    assert f'tpc-{tenant.key}-r2 <span class="chip-state">exited</span>' in detail
    assert "chip--bad" in detail and "chip--ok" in detail

    degraded(tenant, healthy=2)  # repaired
    assert "badge--degraded" not in page(client, operator, "/")
    detail = page(client, operator, f"/tenants/{tenant.slug}/")
    assert "badge--degraded" not in detail and "2 of 2 replicas healthy" in detail


def test_only_active_tenants_show_workload_health(client, operator):
    tenant = create(operator, plan="pro")  # provisioning
    degraded(tenant)
    assert "badge--degraded" not in page(client, operator, "/")
    assert "replicas healthy" not in page(client, operator, f"/tenants/{tenant.slug}/")


def test_operators_get_a_repair_dialog_that_asks_for_a_reason(client, operator, viewer):
    tenant = create(operator)
    activate(tenant)
    html = page(client, operator, f"/tenants/{tenant.slug}/")
    assert 'id="dialog-repair"' in html
    assert 'name="reason" rows="2" maxlength="500" required' in html
    assert 'id="dialog-repair"' not in page(client, viewer, f"/tenants/{tenant.slug}/")


def post_repair(client, user, slug, **data):
    client.force_login(user)
    return client.post(reverse("tenant-repair", args=[slug]), data, follow=True)


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("", "Say why you repair this tenant; nothing was changed."),
        ("  ", "Say why you repair this tenant; nothing was changed."),
        ("x" * 10_000, "Ensure this value has at most 500 characters"),
        ("why\x00", "Null characters are not allowed."),
    ],
)
def test_a_repair_without_a_reason_changes_nothing(client, operator, reason, message):
    tenant = create(operator)
    activate(tenant)
    response = post_repair(client, operator, tenant.slug, reason=reason)
    assert message in response.content.decode()
    assert not WorkloadHealth.objects.filter(tenant=tenant).exists()
    assert not AuditEvent.objects.filter(type="tenant.workload.repaired").exists()


def test_a_viewer_cannot_repair(client, operator, viewer):
    tenant = create(operator)
    activate(tenant)
    assert post_repair(client, viewer, tenant.slug, reason="x").status_code == 403
    assert not WorkloadHealth.objects.filter(tenant=tenant).exists()


def test_repair_of_a_tenant_that_is_not_active_is_refused_with_why(client, operator):
    tenant = create(operator)  # provisioning, its run queued
    html = page(client, operator, f"/tenants/{tenant.slug}/")
    assert 'id="dialog-repair"' not in html
    response = post_repair(client, operator, tenant.slug, reason="try")
    assert "only active tenants are repaired" in response.content.decode()
    assert not AuditEvent.objects.filter(type="tenant.workload.repaired").exists()


@pytest.mark.django_db(transaction=True)
def test_an_operator_repairs_a_tenant_with_a_reason(client, operator, settings):
    settings.WORKLOAD_DRIVER = "process"
    tenant = create(operator)
    activate(tenant)
    try:
        response = post_repair(client, operator, tenant.slug, reason="customer reports 502")
        assert "is repaired" in response.content.decode()
        events = AuditEvent.objects.filter(tenant=tenant, type="tenant.workload.repaired")
        assert {e.details["action"] for e in events} >= {"recreated"}
        assert all(e.actor == operator.username for e in events)
        assert {e.details["reason"] for e in events} == {"customer reports 502"}
        assert {e.details["source"] for e in events} == {"operator"}
        health = WorkloadHealth.objects.get(tenant=tenant)
        assert (health.healthy, health.expected) == (1, 1)
    finally:
        driver = get_driver("process")
        driver.remove_replicas(tenant.key)
        driver.remove_network(tenant.key)
