"""Diagnostics: the escalation bundle from the command, the endpoint and the detail page."""

import json

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse

from provisioning import actions, diagnostics
from provisioning import faults as fault_specs
from provisioning.models import StepLogLine
from tenants.models import Tenant
from tests.conftest import drive, new_tenant
from tests.views_support import create, fail, run_of, start


def run_command(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("tenant_diagnostics", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_failed_retried_and_failed_again_shows_both_attempts_errors_and_actions(
    plans, operator, settings, faults_enabled, fast_backoff
):
    settings.WORKLOAD_DRIVER = "process"
    tenant = new_tenant("twice", user=operator, faults=["seed_schema:permanent"])
    assert drive(tenant) == "failed"
    actions.reset_provisioning(tenant, user=operator, reason="start clean")
    run = actions.retry_provisioning(tenant, user=operator, reason="schema fixed, try again")
    run.faults = [fault_specs.parse("deploy_workloads:permanent")]
    run.save(update_fields=["faults"])
    assert drive(tenant) == "failed"

    data = diagnostics.bundle(tenant)
    assert data["tenant"]["id"] == tenant.pk
    assert data["tenant"]["slug"] == "twice" and data["tenant"]["org"] == "demo"
    assert data["tenant"]["plan"] == "free" and data["tenant"]["state"] == "failed"

    first, second = data["attempts"]
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert first["status"] == second["status"] == "failed"
    assert first["failed_step"] == "seed_schema"
    assert "injected permanent fault at seed_schema" in first["error"]
    assert first["reset_at"] is not None
    assert second["failed_step"] == "deploy_workloads"
    assert "injected permanent fault at deploy_workloads" in second["error"]
    for attempt in (first, second):
        assert attempt["started_at"] and attempt["finished_at"]
        assert attempt["duration_s"] is not None
        assert [s["id"] for s in attempt["steps"]][:2] == ["validate", "allocate_storage"]

    failing = data["failing_step"]
    assert failing["id"] == "deploy_workloads" and failing["attempt"] == 2
    assert "injected permanent fault" in failing["error"]
    assert isinstance(failing["log"], list)
    assert data["last_successful_step"]["id"] == "seed_schema"
    assert data["last_successful_step"]["attempt"] == 2

    steps = [(a["action"], a["actor"], a["reason"], a["attempt"]) for a in data["operator_actions"]]
    assert steps == [
        ("reset", "olivia", "start clean", 1),
        ("retry", "olivia", "schema fixed, try again", 2),
    ]
    assert data["tried"]["cancel"] == []
    assert len(data["tried"]["reset"]) == 1 and len(data["tried"]["retry"]) == 1
    seqs = [a["seq"] for a in data["operator_actions"]]
    assert seqs == sorted(seqs)

    # Everything the second attempt made was undone, and the check says so.
    resources = {r["step"]: r for r in data["resources"]}
    assert resources["allocate_storage"]["exists"] is False
    assert resources["allocate_storage"]["created"] == {"schema": tenant.schema_name}
    assert resources["allocate_network"]["exists"] is False
    assert data["same_slug"] == []

    # The command: text and JSON, the same facts.
    text = run_command("twice")
    assert "injected permanent fault at seed_schema" in text
    assert "injected permanent fault at deploy_workloads" in text
    assert text.index("reset by olivia") < text.index("retry by olivia")
    assert "protocol #1" not in text and "provision #1" in text and "provision #2" in text
    parsed = json.loads(run_command("twice", "--json"))
    assert [a["attempt"] for a in parsed["attempts"]] == [1, 2]


@pytest.mark.django_db
def test_cancel_reset_retry_are_listed_in_order_with_actor_and_reason(operator):
    tenant = create(operator)
    start(tenant, "wait_ready")
    actions.request_cancel(tenant, user=operator, reason="wrong plan")
    fail(tenant, "wait_ready", cancelled=True)
    actions.reset_provisioning(tenant, user=operator, reason="clean")
    actions.retry_provisioning(tenant, user=operator, reason="go")
    data = diagnostics.bundle(tenant)
    assert [(a["action"], a["reason"]) for a in data["operator_actions"]] == [
        ("cancel", "wrong plan"),
        ("reset", "clean"),
        ("retry", "go"),
    ]
    assert all(a["actor"] == "olivia" and a["at"] for a in data["operator_actions"])
    assert data["attempts"][0]["cancelled"] is True
    assert data["failing_step"]["cancelled"] is True
    assert data["failing_step"]["id"] == "wait_ready"  # where the cancel caught it


@pytest.mark.django_db
def test_a_resource_check_that_fails_reads_unknown(operator, monkeypatch):
    tenant = create(operator)
    fail(tenant, "wait_ready", compensated=False)
    from provisioning.steps import BY_ID

    def broken(ctx, outputs):
        raise RuntimeError("engine unreachable")

    monkeypatch.setattr(BY_ID["deploy_workloads"], "verify", broken)
    resources = {r["step"]: r for r in diagnostics.bundle(tenant)["resources"]}
    assert resources["deploy_workloads"]["exists"] == "unknown: RuntimeError: engine unreachable"
    assert resources["allocate_identity"]["exists"] is False  # no row was written here
    assert "could not check" in diagnostics.as_text(diagnostics.bundle(tenant))


@pytest.mark.django_db
def test_failing_step_log_lines_are_in_the_bundle(operator):
    tenant = create(operator)
    run = fail(tenant, "deploy_workloads")
    step = run.steps.get(step_id="deploy_workloads")
    StepLogLine.objects.create(step=step, message="pulling image", level="info")
    StepLogLine.objects.create(step=step, message="image not found", level="error")
    log = diagnostics.bundle(tenant)["failing_step"]["log"]
    assert log[0].endswith("info pulling image") and log[1].endswith("error image not found")


@pytest.mark.django_db
def test_successive_tenants_with_one_slug_are_shown(operator, client):
    first = create(operator, org="early")
    Tenant.objects.filter(pk=first.pk).update(state=Tenant.State.DECOMMISSIONED)
    second = create(operator, org="later")
    data = diagnostics.bundle(second)
    assert [(o["id"], o["org"], o["relation"]) for o in data["same_slug"]] == [
        (first.pk, "early", "before")
    ]
    assert diagnostics.bundle(first)["same_slug"][0]["relation"] == "after"
    assert f"id {first.pk} acme-early (before) decommissioned" in diagnostics.as_text(data)

    root = User.objects.create_superuser("root", "root@example.com", "pw-rootroot")
    client.force_login(root)
    page = client.get(reverse("admin:tenants_tenant_change", args=[second.pk])).content.decode()
    assert "Same slug, other tenants" in page
    assert reverse("admin:tenants_tenant_change", args=[first.pk]) in page
    assert "before this one" in page
    page = client.get(reverse("admin:tenants_tenant_change", args=[first.pk])).content.decode()
    assert "after this one" in page


@pytest.mark.django_db
def test_the_endpoint_and_the_copy_button(client, operator, viewer):
    tenant = create(operator)
    fail(tenant)
    url = reverse("tenant-diagnostics", args=["acme"])
    assert url == "/tenants/acme/diagnostics.json"
    assert client.get(url).status_code == 302  # login required
    client.force_login(viewer)  # watching is enough to escalate
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    data = response.json()
    assert data["tenant"]["slug"] == "acme" and data["attempts"][0]["error"]
    assert data["failing_step"]["id"] == "deploy_workloads"
    page = client.get(reverse("tenant-detail", args=["acme"])).content.decode()
    assert f'data-copy-diagnostics="{url}"' in page and "Copy diagnostics" in page
    assert client.get("/tenants/nobody/diagnostics.json").status_code == 404


@pytest.mark.django_db
def test_the_command_refuses_an_unknown_slug(plans):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no tenant with slug"):
        run_command("nobody")


@pytest.mark.django_db
def test_a_running_stalled_step_is_in_the_bundle(operator, settings):
    from datetime import timedelta

    from django.utils import timezone

    settings.PROVISIONING_STALL_FLOOR_SECONDS = 5
    tenant = create(operator)
    start(tenant, "deploy_workloads")
    run_of(tenant).steps.filter(step_id="deploy_workloads").update(
        started_at=timezone.now() - timedelta(seconds=60)
    )
    data = diagnostics.bundle(tenant)
    assert data["current_step"]["id"] == "deploy_workloads"
    assert data["current_step"]["stall"]["stalled"] is True
    assert "STALLED?" in diagnostics.as_text(data)
