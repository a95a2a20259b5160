"""Dry run: `provision_tenant --dry-run` and the create form's Check button create nothing."""

import json
from io import StringIO

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from provisioning import dryrun
from provisioning.models import AuditEvent, ProvisioningRun, StepRun
from tenants.models import Tenant
from tests.views_support import create

# Committed transactions, so that anything enqueued would reach the broker.
pytestmark = pytest.mark.django_db(transaction=True)

ARGS = ["acme", "--org", "demo", "--plan", "enterprise", "--admin-email", "Admin@Example.com"]


def counts(task_queue):
    return (
        Tenant.objects.count(),
        ProvisioningRun.objects.count(),
        StepRun.objects.count(),
        AuditEvent.objects.count(),
        task_queue.queue_size(),
    )


def provision(*args) -> str:
    out = StringIO()
    call_command("provision_tenant", *args, stdout=out)
    return out.getvalue()


def test_dry_run_reports_what_would_be_created_and_creates_nothing(plans, task_queue):
    before = counts(task_queue)
    data = json.loads(provision(*ARGS, "--dry-run", "--json"))
    assert counts(task_queue) == before
    pid = data["predicted_id"]
    ns = django_settings.RESOURCE_NAMESPACE
    assert data["dry_run"] is True and data["ok"] is True
    assert data["admin_email"] == "admin@example.com"  # cleaned as validate cleans it
    w = data["would_create"]
    assert w["schema"] == f"t{pid}_acme"
    assert w["network"] == f"tpc-{ns}t{pid}-acme"
    assert w["containers"] == [f"tpc-{ns}t{pid}-acme-r{i}" for i in (1, 2, 3)]
    assert w["replicas"] == 3
    assert w["route_hostname"] == f"acme-demo.{django_settings.BASE_DOMAIN}"
    assert [e["kind"] for e in w["emails"]] == ["welcome", "console", "onboarding"]
    assert {e["to"] for e in w["emails"]} == {"admin@example.com"}
    assert len(data["steps"]) == 9

    # The prediction holds when nothing else creates a tenant in between.
    tenant = create(None, plan="enterprise")
    assert tenant.pk == pid and tenant.schema_name == w["schema"]


def test_dry_run_text(plans):
    text = provision(*ARGS, "--dry-run")
    assert "passes validation; nothing was created" in text
    assert "containers" in text and "-r3" in text
    assert "acme-demo." in text
    assert Tenant.objects.count() == 0


def test_dry_run_fails_like_validate_and_changes_nothing(operator, task_queue):
    create(operator)
    before = counts(task_queue)
    with pytest.raises(CommandError, match="slug: The slug 'acme' is taken"):
        provision(*ARGS, "--dry-run")
    with pytest.raises(CommandError, match="plan: Unknown plan"):
        provision(
            "other", "--org", "demo", "--plan", "gold", "--admin-email", "a@b.co", "--dry-run"
        )
    assert counts(task_queue) == before


def test_dry_run_names_earlier_holders_of_the_slug(operator):
    earlier = create(operator, org="early")
    Tenant.objects.filter(pk=earlier.pk).update(state=Tenant.State.DECOMMISSIONED)
    data = dryrun.check("acme", "demo", "free", "a@example.com")
    assert [(t["id"], t["state"]) for t in data["same_slug_before"]] == [
        (earlier.pk, "decommissioned")
    ]
    assert f"id {earlier.pk} (early, decommissioned)" in dryrun.as_text(data)


GOOD = {"slug": "acme", "org": "demo", "plan": "pro", "admin_email": "Admin@Example.com"}


def test_the_check_button_shows_the_plan_inline_and_creates_nothing(client, operator, task_queue):
    client.force_login(operator)
    page = client.get(reverse("tenant-new")).content.decode()
    assert 'name="check"' in page
    before = counts(task_queue)
    response = client.post(reverse("tenant-new"), {**GOOD, "check": "1"})
    assert response.status_code == 200
    assert counts(task_queue) == before
    html = response.content.decode()
    assert "Check passed: nothing was created" in html
    pid = dryrun.predicted_id()
    assert f"t{pid}_acme" in html
    assert f"acme-demo.{django_settings.BASE_DOMAIN}" in html
    assert "-r2" in html and "welcome, console, onboarding" in html
    # The form keeps what was typed, so "Create tenant" can follow.
    assert 'value="acme"' in html and 'value="demo"' in html
    response = client.post(reverse("tenant-new"), GOOD)
    assert response.status_code == 302
    assert Tenant.objects.get(slug="acme").pk == pid


def test_the_check_button_shows_problems_inline(client, operator, task_queue):
    create(operator)
    client.force_login(operator)
    before = counts(task_queue)
    response = client.post(reverse("tenant-new"), {**GOOD, "org": "Demo", "check": "1"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Check found problems" in html
    assert "is taken by a tenant" in html and "must be lower-case" in html
    assert counts(task_queue) == before


def test_a_viewer_cannot_check_either(client, viewer):
    client.force_login(viewer)
    response = client.post(reverse("tenant-new"), {**GOOD, "check": "1"})
    assert response.status_code == 403
