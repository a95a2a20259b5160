"""Cancel, retry, reset and decommission from the detail page: POST, CSRF, operators only."""

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from provisioning.models import AuditEvent, ProvisioningRun
from tests.views_support import activate, create, fail, run_of, start

pytestmark = pytest.mark.django_db


def post(client, user, name, slug="acme", htmx=False, **data):
    client.force_login(user)
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(reverse(f"tenant-{name}", args=[slug]), data, headers=headers)


def messages_of(response):
    return [(m.tags, str(m)) for m in get_messages(response.wsgi_request)]


def test_viewer_cannot_cancel(client, operator, viewer):
    tenant = create(operator)
    response = post(client, viewer, "cancel")
    assert response.status_code == 403
    assert not run_of(tenant).cancel_requested
    assert not AuditEvent.objects.filter(type="tenant.provisioning.cancel_requested").exists()


@pytest.mark.parametrize("name", ["retry", "reset", "decommission"])
def test_viewer_cannot_act_on_a_failed_tenant(client, operator, viewer, name):
    tenant = create(operator)
    fail(tenant)
    response = post(client, viewer, name, confirm_slug="acme", force="1")
    assert response.status_code == 403
    tenant.refresh_from_db()
    assert tenant.state == "failed"
    assert tenant.runs.count() == 1


def test_actions_are_post_only(client, operator):
    create(operator)
    client.force_login(operator)
    assert client.get(reverse("tenant-cancel", args=["acme"])).status_code == 405


def test_actions_need_a_csrf_token(operator):
    tenant = create(operator)
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = client.post(reverse("tenant-cancel", args=["acme"]))
    assert response.status_code == 403
    assert not run_of(tenant).cancel_requested


def test_an_unknown_tenant_is_a_404(client, operator):
    assert post(client, operator, "cancel", slug="ghost").status_code == 404


def test_operator_cancels_with_a_reason_in_the_audit_event(client, operator):
    tenant = create(operator)
    start(tenant)
    response = post(client, operator, "cancel", reason="wrong plan")
    assert response.status_code == 302
    assert response["Location"] == reverse("tenant-detail", args=["acme"])
    run = run_of(tenant)
    assert run.cancel_requested
    event = AuditEvent.objects.get(type="tenant.provisioning.cancel_requested")
    assert event.actor == "olivia" and event.details["reason"] == "wrong plan"
    assert messages_of(response)[0][0] == "success"


def test_cancelling_twice_says_already_under_way_not_an_error(client, operator):
    tenant = create(operator)
    start(tenant)
    post(client, operator, "cancel")
    response = post(client, operator, "cancel")
    assert response.status_code == 302
    level, text = messages_of(response)[-1]
    assert level == "info" and "already under way" in text
    assert AuditEvent.objects.filter(type="tenant.provisioning.cancel_requested").count() == 1


def test_an_action_the_state_refuses_is_an_error_message(client, operator):
    tenant = create(operator)
    activate(tenant)
    response = post(client, operator, "cancel")
    level, text = messages_of(response)[-1]
    assert level == "error" and "only a tenant that is provisioning can be cancelled" in text


def test_retry_starts_a_new_attempt(client, operator):
    tenant = create(operator)
    fail(tenant)
    response = post(client, operator, "retry", reason="image loaded")
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert tenant.state == "provisioning"
    assert run_of(tenant).attempt == 2
    event = AuditEvent.objects.get(type="tenant.provisioning.retried")
    assert event.details["reason"] == "image loaded"


def test_retry_past_three_failures_asks_for_force(client, operator):
    tenant = create(operator)
    fail(tenant)
    ProvisioningRun.objects.filter(tenant=tenant).update(status="failed")
    for _ in range(2):
        post(client, operator, "retry")
        fail(tenant)
    assert tenant.runs.filter(status="failed").count() == 3
    response = post(client, operator, "retry")
    level, text = messages_of(response)[-1]
    assert level == "error" and "failed 3 times" in text
    assert tenant.runs.count() == 3
    detail = client.get(reverse("tenant-detail", args=["acme"])).content.decode()
    assert 'name="force"' in detail
    response = post(client, operator, "retry", force="1")
    assert tenant.runs.count() == 4
    assert AuditEvent.objects.filter(type="tenant.provisioning.retried").first().details["forced"]


def test_reset_clears_the_last_attempt(client, operator):
    tenant = create(operator)
    fail(tenant)
    post(client, operator, "reset", reason="start clean")
    assert run_of(tenant).reset_at is not None
    response = post(client, operator, "reset")
    level, text = messages_of(response)[-1]
    assert level == "info" and "already reset" in text


def test_decommission_needs_the_typed_slug(client, operator):
    tenant = create(operator)
    activate(tenant)
    response = post(client, operator, "decommission", confirm_slug="acm")
    level, text = messages_of(response)[-1]
    assert level == "error" and "Type the slug acme" in text
    tenant.refresh_from_db()
    assert tenant.state == "active"
    post(client, operator, "decommission", confirm_slug="acme", reason="customer left")
    tenant.refresh_from_db()
    assert tenant.state == "decommissioning"
    event = AuditEvent.objects.get(type="tenant.decommission.started")
    assert event.details == {"from_state": "active", "reason": "customer left"}


def test_an_htmx_action_answers_with_fresh_fragments_and_a_toast(client, operator):
    tenant = create(operator)
    start(tenant)
    response = post(client, operator, "cancel", htmx=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="actions" class="card actions-card" hx-swap-oob="morph"' in html
    assert 'id="timeline"' in html and 'id="step-line"' in html
    assert 'hx-swap-oob="beforeend:#toasts"' in html and "Cancel requested" in html
    # Cancel is now under way, so the button is disabled and says why.
    assert "cancel of acme is already under way" in html
    assert messages_of(response) == []  # said in the toast, not left for the next page
    assert run_of(tenant).cancel_requested


def test_an_htmx_repeat_says_already_under_way_as_info(client, operator):
    tenant = create(operator)
    start(tenant)
    post(client, operator, "cancel", htmx=True)
    html = post(client, operator, "cancel", htmx=True).content.decode()
    assert "toast--info" in html and "already under way" in html
