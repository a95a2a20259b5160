"""In Chromium: "stalled?" appears live during a hang, and Copy diagnostics copies the bundle."""

import json
import re

import pytest
from playwright.sync_api import expect

from provisioning import actions
from provisioning.models import AuditEvent
from tenants.models import Tenant
from tests.browser_support import shot
from tests.conftest import new_tenant, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stall_fast(settings, monkeypatch):
    """Small thresholds for the workers and daphne (they read the environment) and here."""
    env = {
        "PROVISIONING_HEARTBEAT_SECONDS": "0.5",
        "PROVISIONING_STALL_FACTOR": "0.01",
        "PROVISIONING_STALL_WAIT_FLOOR_SECONDS": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings.PROVISIONING_FAULTS_ENABLED = True
    settings.PROVISIONING_STALL_FACTOR = 0.01
    settings.PROVISIONING_STALL_WAIT_FLOOR_SECONDS = 2


def test_a_hang_on_wait_ready_shows_stalled_and_diagnostics_can_be_copied(
    stall_fast, operator, open_page
):
    tenant = new_tenant("hangs", faults=["wait_ready:hang:60"])
    page = open_page(operator, "/tenants/hangs/")
    row = page.locator("#step-wait_ready")
    expect(row).to_have_class(re.compile("step--running"), timeout=30_000)
    expect(row.locator(".badge--stalled")).to_be_visible(timeout=10_000)
    expect(row.locator(".step-stall")).to_contain_text("Replicas are not answering")
    expect(page.locator("#step-line .badge--stalled")).to_have_text("stalled?")
    expect(page.locator("#tenant-events")).to_contain_text("flagged as stalled")
    shot(page, "detail-stalled")

    list_page = open_page(operator, "/")
    expect(list_page.locator(f"#tenant-row-{tenant.pk} .badge--stalled")).to_be_visible()
    shot(list_page, "list-stalled")

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy diagnostics").click()
    expect(page.locator(".diagnostics-card .copy-status")).to_contain_text(
        "Copied diagnostics", timeout=10_000
    )
    copied = json.loads(page.evaluate("navigator.clipboard.readText()"))
    assert copied["tenant"]["slug"] == "hangs"
    assert copied["current_step"]["id"] == "wait_ready"
    assert copied["current_step"]["stall"]["stalled"] is True

    # Many beats later, still exactly one event; then cancel ends the hang.
    page.wait_for_timeout(2_000)
    assert AuditEvent.objects.filter(tenant=tenant, type="tenant.provisioning.stalled").count() == 1
    actions.request_cancel(tenant, reason="stalled")
    wait_for(
        lambda: Tenant.objects.get(pk=tenant.pk).state == "failed",
        timeout=30,
        message="the cancel to finish",
    )
    expect(page.locator("#step-line .badge--stalled")).to_have_count(0)


def test_the_check_button_shows_what_would_be_created(operator, open_page):
    page = open_page(operator, "/tenants/new/")
    page.fill("#id_slug", "checked")
    page.fill("#id_org", "demo")
    page.locator("label.plan-option", has_text="Enterprise").click()
    page.fill("#id_admin_email", "admin@example.com")
    page.get_by_role("button", name="Check").click()
    result = page.locator("#check-result")
    expect(result).to_contain_text("Check passed: nothing was created")
    expect(result).to_contain_text("-checked-r3")
    expect(result).to_be_focused()
    shot(page, "new-check")
    assert not Tenant.objects.filter(slug="checked").exists()
    page.get_by_role("button", name="Create tenant").click()
    page.wait_for_url("**/tenants/checked/")
    assert Tenant.objects.filter(slug="checked").exists()
    actions.request_cancel(Tenant.objects.get(slug="checked"))
