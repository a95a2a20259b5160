"""The console in Debian's Chromium against daphne and a real qcluster.

Every assertion waits on the page: the tests never reload to see a change,
so a passing test shows the server pushed it.
"""

import re

import pytest
from playwright.sync_api import expect

from provisioning import actions
from provisioning.drivers import get_driver
from provisioning.steps.storage import drop_schema
from tenants.models import Tenant
from tests.browser_support import shot
from tests.conftest import new_tenant, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def step(page, step_id):
    return page.locator(f"#step-{step_id}")


def badge(page):
    return page.locator("#tenant-header .badge")


def cleanup(slug):
    tenant = Tenant.objects.exclude(state="decommissioned").filter(slug=slug).first()
    if tenant is None:
        return
    driver = get_driver()
    driver.remove_replicas(tenant.key)
    driver.remove_network(tenant.key)
    drop_schema(tenant.schema_name)


def test_an_operator_creates_a_tenant_and_watches_it_become_active(operator, open_page):
    page = open_page(operator, "/tenants/new/")
    page.fill("input[name=slug]", "acme")
    page.fill("input[name=org]", "demo")
    page.check("input[name=plan][value=pro]")
    page.fill("input[name=admin_email]", "admin@example.com")
    page.get_by_role("button", name="Create tenant").click()
    page.wait_for_url(re.compile(r"/tenants/acme/$"))
    expect(page.locator("#toasts")).to_contain_text("Provisioning started")
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
    expect(badge(page)).to_contain_text("Provisioning")
    expect(badge(page)).to_contain_text("Active", timeout=30_000)
    expect(page.locator("#toasts")).to_contain_text("acme is active")
    expect(step(page, "send_welcome_emails")).to_have_class(re.compile("step--succeeded"))
    expect(page.locator("#step-activated")).to_contain_text("Tenant activated")
    expect(page.get_by_role("link", name=re.compile("Open admin console"))).to_have_attribute(
        "href", re.compile(r"^http://acme-demo\.localhost:\d+/$")
    )
    assert page.url.endswith("/tenants/acme/")  # never reloaded
    shot(page, "detail-active")
    cleanup("acme")


def test_two_tabs_on_one_tenant_see_the_same_states_and_the_toast(
    operator, open_page, faults_enabled
):
    tabs = [open_page(operator, "/") for _ in range(2)]  # signed in first
    new_tenant("twins", faults=["validate:hang:3"])  # slow enough to open both
    for tab in tabs:
        tab.goto(tab.url.rstrip("/") + "/tenants/twins/")
    for tab in tabs:
        expect(badge(tab)).to_contain_text("Provisioning")
    for tab in tabs:
        expect(badge(tab)).to_contain_text("Active", timeout=30_000)
        expect(tab.locator("#toasts")).to_contain_text("twins is active")
    timelines = [tab.locator("#timeline .step-status").all_inner_texts() for tab in tabs]
    assert timelines[0] == timelines[1]
    cleanup("twins")


def test_a_transient_fault_shows_the_retry_count(operator, open_page, faults_enabled):
    new_tenant("retry", faults=["seed_schema:transient:2"])
    page = open_page(operator, "/tenants/retry/")
    expect(badge(page)).to_contain_text("Active", timeout=30_000)
    expect(step(page, "seed_schema")).to_contain_text("Attempt 3 of 3")
    cleanup("retry")


def test_a_permanent_fault_shows_the_failure_and_retry_reaches_active(
    operator, open_page, faults_enabled
):
    new_tenant("broken", faults=["deploy_workloads:permanent"])
    page = open_page(operator, "/tenants/broken/")
    expect(badge(page)).to_contain_text("Failed", timeout=30_000)
    card = page.locator("#error-card")
    expect(card).to_contain_text("Deploy workloads")
    expect(card).to_contain_text("injected permanent fault")
    expect(card).to_contain_text("Injected fault")  # the classified category
    for step_id in ("seed_schema", "allocate_network", "allocate_storage"):
        expect(step(page, step_id)).to_have_class(re.compile("step--compensated"))
    expect(page.locator("#step-deploy_workloads details.step-log")).to_have_attribute("open", "")
    shot(page, "detail-failed")
    # Retry: a new attempt without the fault.
    expect(page.locator("body")).to_have_attribute("data-live-synced", "true")
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#dialog-retry")).to_be_visible()
    page.locator("#dialog-retry button[type=submit]").click()
    expect(badge(page)).to_contain_text("Active", timeout=30_000)
    expect(page.locator("#error-card")).to_be_empty()
    cleanup("broken")


def test_cancel_during_a_hang_ends_failed_and_cancelled(operator, open_page, faults_enabled):
    new_tenant("stuck", faults=["deploy_workloads:hang:60"])
    page = open_page(operator, "/tenants/stuck/")
    expect(step(page, "deploy_workloads")).to_have_class(
        re.compile("step--running"), timeout=20_000
    )
    shot(page, "detail-provisioning")
    # The socket's first full-state push replaces the regions once; act after it.
    expect(page.locator("body")).to_have_attribute("data-live-synced", "true")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#dialog-cancel")).to_be_visible()
    page.fill("#reason-cancel", "stuck in deploy")
    page.locator("#dialog-cancel button[type=submit]").click()
    expect(badge(page)).to_contain_text("Failed", timeout=10_000)
    expect(badge(page)).to_contain_text("cancelled")
    expect(page.locator("#error-card")).to_contain_text("Cancelled by operator")
    expect(page.locator("#error-card")).to_contain_text("What had been created")
    expect(page.locator("#error-card .resource").first).to_contain_text("Removed")


def test_the_list_page_updates_live(operator, open_page, faults_enabled):
    page = open_page(operator, "/")
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
    tenant = new_tenant("listed", user=operator)
    failing = new_tenant("doomed", plan="pro", faults=["deploy_workloads:permanent"])
    slow = new_tenant("slowpoke", plan="enterprise", faults=["validate:hang:20"])
    row = page.locator(f"#tenant-row-{tenant.pk}")
    expect(row).to_be_visible(timeout=10_000)
    expect(row).to_contain_text("Active", timeout=30_000)
    expect(page.locator(f"#tenant-row-{failing.pk}")).to_contain_text("Failed", timeout=30_000)
    expect(page.locator(f"#tenant-row-{slow.pk}")).to_contain_text("Provisioning")
    shot(page, "list")
    phone = open_page(operator, "/tenants/listed/", viewport={"width": 390, "height": 844})
    expect(badge(phone)).to_contain_text("Active")
    shot(phone, "detail-active-phone")
    actions.request_cancel(slow)
    cleanup("listed")


def test_after_the_server_drops_the_socket_the_page_reconnects_and_catches_up(
    operator, open_page, console, faults_enabled
):
    new_tenant("drop", faults=["deploy_workloads:hang:4"])
    page = open_page(operator, "/tenants/drop/")
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
    expect(step(page, "deploy_workloads")).to_have_class(
        re.compile("step--running"), timeout=20_000
    )
    console.stop()  # every socket closes server-side; the run goes on in the worker
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "reconnecting")
    # The run finishes while the page is cut off.
    wait_for(
        lambda: Tenant.objects.get(slug="drop").state == "active",
        timeout=30,
        poll=0.2,
        message="drop to become active while the page is cut off",
    )
    console.start()
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live", timeout=20_000)
    expect(badge(page)).to_contain_text("Active", timeout=10_000)
    cleanup("drop")


def test_a_viewer_sees_no_actions_and_is_refused_when_posting_one(viewer, open_page, plans):
    new_tenant("watched")
    page = open_page(viewer, "/tenants/watched/")
    expect(page.locator("#actions")).to_contain_text("needs the operators group")
    expect(page.locator("#actions button")).to_have_count(0)
    token = page.locator("input[name=csrfmiddlewaretoken], meta[name=csrf-token]").first
    csrf = token.get_attribute("value") or token.get_attribute("content")
    if not csrf:
        csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.post(
        page.url + "cancel/", form={"reason": "forced"}, headers={"X-CSRFToken": csrf}
    )
    assert response.status == 403
    assert Tenant.objects.get(slug="watched").runs.get().cancel_requested is False
    cleanup("watched")


def test_the_failure_banner_appears_live_and_a_dismissal_reaches_every_tab(
    operator, open_page, faults_enabled
):
    tabs = [open_page(operator, "/") for _ in range(2)]
    for tab in tabs:
        expect(tab.locator("#live-indicator")).to_have_attribute("data-state", "live")
    new_tenant("sad", user=operator, faults=["allocate_storage:permanent"])
    for tab in tabs:
        expect(tab.locator("#failure-banner")).to_contain_text(
            "Last attempt failed", timeout=20_000
        )
        expect(tab.locator("#failure-banner")).to_contain_text("sad")
    tabs[0].locator("#failure-banner").get_by_role("button", name="Dismiss").click()
    for tab in tabs:
        expect(tab.locator("#failure-banner")).to_be_empty(timeout=5_000)
