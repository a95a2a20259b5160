"""The admin: audit events read-only, the saga's records browsable but not editable."""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from provisioning.models import AuditEvent
from tests.views_support import create, fail

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, plans):
    user = User.objects.create_superuser("root", "root@example.com", "pw-rootroot")
    client.force_login(user)
    return client


def test_audit_events_can_be_browsed_but_not_added_changed_or_deleted(admin_client, operator):
    fail(create(operator))
    event = AuditEvent.objects.first()
    changelist = reverse("admin:provisioning_auditevent_changelist")
    response = admin_client.get(changelist, {"q": "acme"})
    assert response.status_code == 200
    assert "tenant.provisioning.failed" in response.content.decode()
    assert admin_client.get(changelist, {"type": "tenant.created"}).status_code == 200
    assert admin_client.get(changelist, {"created_at__year": "2026"}).status_code == 200
    assert admin_client.get(reverse("admin:provisioning_auditevent_add")).status_code == 403
    page = admin_client.get(reverse("admin:provisioning_auditevent_change", args=[event.pk]))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    delete = reverse("admin:provisioning_auditevent_delete", args=[event.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_runs_show_their_steps_read_only(admin_client, operator):
    tenant = create(operator)
    run = fail(tenant)
    page = admin_client.get(reverse("admin:provisioning_provisioningrun_change", args=[run.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "deploy_workloads" in html and 'name="_save"' not in html
    response = admin_client.post(
        reverse("admin:provisioning_provisioningrun_change", args=[run.pk]), {"status": "queued"}
    )
    assert response.status_code == 403
    run.refresh_from_db()
    assert run.status == "failed"


def test_tenants_are_browsable_not_editable(admin_client, operator):
    tenant = create(operator)
    assert admin_client.get(reverse("admin:tenants_tenant_changelist")).status_code == 200
    page = admin_client.get(reverse("admin:tenants_tenant_change", args=[tenant.pk]))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert admin_client.get(reverse("admin:tenants_tenant_add")).status_code == 403


def test_plans_are_editable(admin_client):
    response = admin_client.get(reverse("admin:tenants_plan_changelist"))
    assert response.status_code == 200 and "Enterprise" in response.content.decode()
