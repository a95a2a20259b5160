"""The create form: inline errors from validate_request, 403 for viewers, a fast redirect."""

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils.html import escape

from provisioning import actions
from provisioning.models import AuditEvent, ProvisioningRun
from tenants.models import Tenant
from tenants.validation import label_error

pytestmark = pytest.mark.django_db

GOOD = {"slug": "acme", "org": "demo", "plan": "pro", "admin_email": "Admin@Example.com"}


def test_the_form_shows_each_plans_replicas(client, operator):
    client.force_login(operator)
    response = client.get(reverse("tenant-new"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Free — 1 replica," in html
    assert "Pro — 2 replicas" in html
    assert "Enterprise — 3 replicas" in html
    assert 'name="csrfmiddlewaretoken"' in html


def test_a_viewer_cannot_open_or_post_the_form(client, viewer):
    client.force_login(viewer)
    assert client.get(reverse("tenant-new")).status_code == 403
    assert client.post(reverse("tenant-new"), GOOD).status_code == 403
    assert not Tenant.objects.exists()


def test_an_outsider_without_a_group_cannot_create_either(client, outsider):
    client.force_login(outsider)
    assert client.post(reverse("tenant-new"), GOOD).status_code == 403


def test_bad_input_shows_the_validation_messages_inline(client, operator):
    client.force_login(operator)
    response = client.post(
        reverse("tenant-new"), {"slug": "Acme", "org": "-x-", "plan": "gold", "admin_email": "no"}
    )
    assert response.status_code == 200
    html = response.content.decode()
    # The very messages of validate_request, the one place rules live.
    assert escape(label_error("Acme", "slug")) in html
    assert escape(label_error("-x-", "org")) in html
    assert "Unknown plan &#x27;gold&#x27;" in html
    assert "is not a valid email address" in html
    assert 'id="id_slug_error"' in html
    assert not Tenant.objects.exists()


def test_an_empty_form_says_what_to_enter(client, operator):
    client.force_login(operator)
    html = client.post(reverse("tenant-new"), {}).content.decode()
    assert escape(label_error("", "slug")) in html and escape(label_error("", "org")) in html


def test_a_taken_slug_is_refused_inline(client, operator):
    actions.create_tenant(
        slug="acme", org="demo", plan="free", admin_email="a@example.com", user=operator
    )
    client.force_login(operator)
    html = client.post(reverse("tenant-new"), GOOD).content.decode()
    assert "is taken by a tenant that is not decommissioned" in html
    assert Tenant.objects.count() == 1


def test_creating_redirects_to_the_detail_page_with_a_message(
    client, operator, task_queue, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("tenant-new"), GOOD)
    assert response.status_code == 302
    assert response["Location"] == reverse("tenant-detail", args=["acme"])
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["Provisioning started"]
    tenant = Tenant.objects.get()
    assert (tenant.slug, tenant.plan.name, tenant.admin_email) == (
        "acme",
        "pro",
        "admin@example.com",
    )
    assert tenant.state == "provisioning" and tenant.created_by == operator
    assert AuditEvent.objects.filter(tenant=tenant, type="tenant.created", actor="olivia").exists()
    assert task_queue.queue_size() == 1  # enqueued for a worker; nothing ran here


def test_faults_can_be_injected_from_the_form_only_where_enabled(
    client, operator, settings, task_queue, django_capture_on_commit_callbacks
):
    # (That a slow saga never slows this request is shown with a real worker in
    # tests/test_cluster.py::test_the_create_request_returns_as_fast_...)
    client.force_login(operator)
    settings.PROVISIONING_FAULTS_ENABLED = False
    assert 'name="faults"' not in client.get(reverse("tenant-new")).content.decode()
    settings.PROVISIONING_FAULTS_ENABLED = True
    assert 'name="faults"' in client.get(reverse("tenant-new")).content.decode()
    refused = client.post(reverse("tenant-new"), {**GOOD, "faults": "deploy_workloads:explode"})
    assert refused.status_code == 200 and "unknown kind" in refused.content.decode()
    assert not ProvisioningRun.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("tenant-new"), {**GOOD, "faults": "deploy_workloads:hang:30"}
        )
    assert response.status_code == 302
    run = ProvisioningRun.objects.get()
    assert run.faults == [{"step": "deploy_workloads", "kind": "hang", "n": 30, "used": 0}]
    assert task_queue.queue_size() == 1
