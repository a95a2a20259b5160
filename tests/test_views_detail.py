"""The tenant detail page: header, step line, timeline, error card, actions, events."""

import pytest
from django.urls import reverse

from provisioning.models import StepRun
from tests.views_support import activate, create, fail, start

pytestmark = pytest.mark.django_db


def detail(client, user, slug="acme"):
    client.force_login(user)
    return client.get(reverse("tenant-detail", args=[slug]))


def test_it_needs_a_signed_in_user(client, operator):
    create(operator)
    response = client.get(reverse("tenant-detail", args=["acme"]))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_an_unknown_slug_is_a_404_page(client, operator):
    response = detail(client, operator, "nope")
    assert response.status_code == 404
    assert b"Not found" in response.content


def test_a_new_tenant_shows_provisioning_and_every_live_region(client, operator):
    create(operator)
    response = detail(client, operator)
    assert response.status_code == 200
    html = response.content.decode()
    for element_id in (
        "tenant-header",
        "step-line",
        "step-elapsed",
        "step-progress",
        "timeline",
        "error-card",
        "actions",
        "tenant-events",
        "live-indicator",
        "toasts",
    ):
        assert f'id="{element_id}"' in html, element_id
    assert 'ws-connect="/ws/tenants/acme/"' in html
    assert 'hx-ext="ws"' in html
    assert "badge--provisioning" in html and "spinner" in html
    assert "Step 1/9 · Validate request" in html
    assert html.count('class="step step--pending"') == 9
    assert "X-CSRFToken" in html


def test_a_running_step_shows_its_message_replica_chips_and_interpolation_data(client, operator):
    tenant = create(operator, plan="pro")
    start(
        tenant,
        "wait_ready",
        progress={
            "message": "1/2 replicas ready",
            "fraction": 0.5,
            "replicas": [{"name": "r1", "state": "ready"}, {"name": "r2", "state": "starting"}],
        },
    )
    html = detail(client, operator).content.decode()
    assert "Step 7/9 · Wait for workloads ready" in html
    assert "1/2 replicas ready" in html
    assert "chip chip--ok" in html and "chip chip--warn" in html
    assert 'data-mode="live"' in html and 'data-reported="0.500"' in html
    assert 'data-done="6"' in html
    assert "step step--running" in html


def test_a_retrying_step_shows_attempt_k_of_n_next_attempt_and_last_error(client, operator):
    tenant = create(operator)
    run = start(tenant, "allocate_network")
    step = run.steps.get(step_id="allocate_network")
    step.status = StepRun.Status.RETRYING
    step.error = "engine busy"
    step.next_attempt_at = step.started_at
    step.save()
    html = detail(client, operator).content.decode()
    assert "Attempt 1 of 3 failed" in html
    assert "next attempt at" in html
    assert "engine busy" in html


def test_an_active_tenant_links_to_its_console_and_ends_with_tenant_activated(client, operator):
    tenant = create(operator)
    activate(tenant)
    html = detail(client, operator).content.decode()
    assert "badge--active" in html
    assert f'href="{tenant.url}"' in html and "Open admin console" in html
    assert 'id="step-activated"' in html and "Tenant activated" in html
    assert "All 9 steps done" in html


def test_a_failed_tenant_shows_the_error_card_with_category_and_next_action(client, operator):
    tenant = create(operator)
    fail(tenant, "deploy_workloads")
    html = detail(client, operator).content.decode()
    assert "badge--failed" in html
    assert "Provisioning failed" in html
    assert "Failed at step 6/9 · Deploy workloads" in html
    assert "image tenant-console/workload:1 not found" in html
    assert "Workload image missing" in html
    assert "Build or load the plan" in html
    # The failed step keeps its cross although it was undone, and the others show undone.
    assert "Failed · undone" in html
    assert "step step--compensated" in html
    # What had been created, and that it was removed.
    assert "PostgreSQL schema t1_acme" in html and "Removed" in html


def test_a_cancelled_tenant_says_cancelled_and_lists_what_was_removed(client, operator):
    tenant = create(operator)
    fail(tenant, "seed_schema", cancelled=True)
    html = detail(client, operator).content.decode()
    assert "Provisioning was cancelled" in html
    assert "Cancelled by operator" in html
    assert "(cancelled)" in html
    # The engine records no failed step for a cancel: the page says where it stopped.
    assert "Cancelled at step 5/9 · Apply tenant schema" in html
    assert "Cancelled here · undone" in html
    assert "Network tpc-t1-acme and route acme.local" in html


def test_a_cancel_says_who_asked_and_why(client, operator):
    tenant = create(operator)
    start(tenant)
    client.force_login(operator)
    client.post(reverse("tenant-cancel", args=["acme"]), {"reason": "wrong org"})
    fail(tenant, "deploy_workloads", cancelled=True)
    html = client.get(reverse("tenant-detail", args=["acme"])).content.decode()
    assert "Cancel requested by <strong>olivia</strong>: “wrong org”" in html


def test_a_failed_steps_log_panel_opens_by_itself(client, operator):
    tenant = create(operator)
    run = start(tenant, "allocate_storage")
    step = run.steps.get(step_id="allocate_storage")
    step.log_lines.create(message="creating schema", level="info")
    step.status = StepRun.Status.FAILED
    step.save()
    html = detail(client, operator).content.decode()
    assert f'<details class="step-log" id="log-{step.pk}" open>' in html
    assert "creating schema" in html


def test_an_operator_sees_only_the_actions_the_state_allows(client, operator):
    tenant = create(operator)
    html = detail(client, operator).content.decode()
    assert 'commandfor="dialog-cancel" command="show-modal"' in html
    assert 'id="dialog-cancel"' in html
    # Decommission is shown disabled, saying why.
    assert "acme is provisioning: cancel it first, then decommission it" in html
    assert 'id="dialog-retry"' not in html
    fail(tenant)
    html = detail(client, operator).content.decode()
    for name in ("retry", "reset", "decommission"):
        assert f'id="dialog-{name}"' in html
    assert 'id="dialog-cancel"' not in html
    assert 'required pattern="acme"' in html  # the typed slug must be acme


def test_a_viewer_sees_no_actions(client, operator, viewer):
    create(operator)
    html = detail(client, viewer).content.decode()
    assert "dialog-cancel" not in html
    assert "Acting on it needs the operators group" in html
    assert "New tenant" not in html


def test_the_tenants_events_are_listed_newest_first(client, operator):
    tenant = create(operator)
    fail(tenant)
    html = detail(client, operator).content.decode()
    failed = html.index("provisioning.failed")
    created = html.index(">created<")
    assert failed < created


def test_a_decommissioned_slug_shows_the_live_holder(client, operator):
    from tenants.models import Tenant

    old = create(operator)
    Tenant.objects.filter(pk=old.pk).update(state=Tenant.State.DECOMMISSIONED)
    old.runs.update(status="failed")
    new = create(operator, org="other")
    html = detail(client, operator).content.decode()
    assert "-other" in html and new.pk != old.pk
