"""Poison runs: an error the engine itself raises, or a plan budget it refuses, ends a run.

Driven in this process against real PostgreSQL, as the reaper would: each
drive() is one delivery of the run's task.
"""

import json
import logging
import time

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from provisioning import actions, ledger, reaper
from provisioning.models import AuditEvent, ProvisioningRun, StepLogLine, StepRun
from provisioning.steps import STEP_IDS, validate_step_budgets
from provisioning.steps.base import InvalidBudgets
from provisioning.steps.emails import SendWelcomeEmails
from provisioning.steps.identity import AllocateIdentity
from provisioning.steps.storage import schema_exists
from tenants.models import Plan
from tests.conftest import drive, new_tenant

pytestmark = pytest.mark.django_db(transaction=True)

BOOM = "platform error: RuntimeError: boom after allocate_identity"


@pytest.fixture
def identity_breaks_the_engine(monkeypatch):
    """allocate_identity's on_success runs inside the engine's own write (not the step's
    try), so what it raises escapes the step's handling: an engine bug, as far as the
    run can tell."""

    def explode(self, ctx, outputs):
        raise RuntimeError("boom after allocate_identity")

    monkeypatch.setattr(AllocateIdentity, "on_success", explode)


def run_of(tenant) -> ProvisioningRun:
    return ProvisioningRun.objects.get(tenant=tenant)


def step_of(tenant, step_id) -> StepRun:
    return StepRun.objects.get(run__tenant=tenant, step_id=step_id)


def until_given_up(tenant, settings) -> list[str]:
    """Deliver the run's task as the reaper would, until it ends (never more than the limit)."""
    results = [drive(tenant) for _ in range(settings.PROVISIONING_MAX_RESUMES + 2)]
    assert drive(tenant).startswith("not claimed")
    return results


def test_an_unexpected_error_is_recorded_and_the_lease_let_go(
    plans, identity_breaks_the_engine, caplog
):
    tenant = new_tenant()
    with caplog.at_level(logging.ERROR, logger="provisioning.engine"):
        result = drive(tenant)
    assert result == f"resumable: {BOOM}"
    run = run_of(tenant)
    assert (run.status, run.error, run.error_category) == ("running", BOOM, "platform")
    assert run.lease_owner == "" and run.resumes == 0
    step = step_of(tenant, "allocate_identity")
    assert (step.status, step.error, step.error_category) == ("retrying", BOOM, "platform")
    assert StepLogLine.objects.filter(step=step, level="error", message=BOOM).exists()
    event = AuditEvent.objects.filter(run=run).order_by("-seq").first()
    assert event.type == "tenant.provisioning.step_retrying"
    assert event.details["category"] == "platform" and event.details["error"] == BOOM
    # The worker's log keeps the traceback for whoever fixes the bug.
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)
    assert "Traceback" in caplog.text


def test_the_next_claim_resumes_the_step_and_counts_the_resume(plans, identity_breaks_the_engine):
    tenant = new_tenant()
    drive(tenant)
    assert drive(tenant).startswith("resumable")
    run = run_of(tenant)
    assert run.resumes == 1
    assert step_of(tenant, "allocate_identity").attempts == 2  # ran again on the resume
    assert step_of(tenant, "allocate_storage").attempts == 1  # done, so skipped


def test_past_the_resume_limit_the_run_fails_compensates_and_the_reaper_stops(
    plans, identity_breaks_the_engine, settings, task_queue, client, operator
):
    tenant = new_tenant()
    limit = settings.PROVISIONING_MAX_RESUMES
    for attempt in range(limit + 1):
        assert drive(tenant).startswith("resumable"), attempt
        # Let go at once, so the reaper's next pass resumes it.
        task_queue.purge_queue()
        reaper.reap()
        assert task_queue.queue_size() == 1
    assert drive(tenant) == "failed"

    run = run_of(tenant)
    tenant.refresh_from_db()
    assert tenant.state == "failed"
    assert (run.status, run.error_category, run.failed_step) == (
        "failed",
        "platform",
        "allocate_identity",
    )
    assert run.error == BOOM and run.resumes == limit + 1
    statuses = dict(StepRun.objects.filter(run=run).values_list("step_id", "status"))
    assert [statuses[s] for s in STEP_IDS[:3]] == ["compensated"] * 3
    assert {statuses[s] for s in STEP_IDS[3:]} == {"pending"}
    undone = AuditEvent.objects.filter(run=run, type="tenant.provisioning.compensated")
    assert [e.details["step"] for e in undone.order_by("seq")] == [
        "allocate_identity",
        "allocate_storage",
        "validate",
    ]
    assert not schema_exists(tenant.schema_name)
    failed = AuditEvent.objects.get(run=run, type="tenant.provisioning.failed")
    assert failed.details["category"] == "platform" and failed.details["error"] == BOOM

    # The reaper never picks it up again.
    task_queue.purge_queue()
    for _ in range(3):
        reaper.reap()
    assert task_queue.queue_size() == 0

    client.force_login(operator)
    html = client.get(reverse("tenant-detail", args=[tenant.slug])).content.decode()
    assert (
        f"The provisioning engine hit an unexpected error or lost its worker {limit + 1} times "
        "while running Allocate identity store and gave up."
    ) in html
    assert "Platform error" in html
    assert "report it with the diagnostics bundle (Copy diagnostics); after a fix, retry." in html
    assert BOOM in html


def test_invalid_budgets_saved_past_the_admin_fail_the_run_as_a_platform_error(
    plans, settings, client, operator
):
    Plan.objects.filter(name="free").update(step_budgets={"wait_ready": {"attempts": "lots"}})
    tenant = new_tenant()
    client.force_login(operator)
    # Pages fall back to the defaults rather than break on the budget.
    assert client.get(reverse("tenant-detail", args=[tenant.slug])).status_code == 200

    results = until_given_up(tenant, settings)
    assert results[-1] == "failed"
    run = run_of(tenant)
    assert (run.status, run.error_category, run.failed_step) == ("failed", "platform", "validate")
    assert run.error == (
        "platform error: InvalidBudgets: plan free's step_budgets: "
        "wait_ready.attempts must be a whole number from 1 to 100"
    )
    tenant.refresh_from_db()
    assert tenant.state == "failed"
    page = client.get(reverse("tenant-detail", args=[tenant.slug])).content.decode()
    assert "while running Validate request and gave up." in page


def test_a_compensation_that_keeps_raising_still_ends_the_run(
    plans, faults_enabled, settings, monkeypatch, task_queue
):
    tenant = new_tenant(faults=["allocate_identity:permanent"])

    def broken(*args, **kwargs):
        raise RuntimeError("cannot record an undo")

    monkeypatch.setattr(ledger, "step_compensated", broken)
    results = until_given_up(tenant, settings)
    assert results[:-1] == ["resumable: platform error: RuntimeError: cannot record an undo"] * (
        settings.PROVISIONING_MAX_RESUMES + 1
    )
    assert results[-1] == "failed: platform error: RuntimeError: cannot record an undo"
    run = run_of(tenant)
    tenant.refresh_from_db()
    assert (tenant.state, run.status, run.error_category) == ("failed", "failed", "platform")
    assert run.error == "platform error: RuntimeError: cannot record an undo"
    assert run.failed_step == "allocate_identity"  # the failure it was undoing
    assert AuditEvent.objects.filter(run=run, type="tenant.provisioning.failed").count() == 1
    task_queue.purge_queue()
    reaper.reap()
    assert task_queue.queue_size() == 0


def test_a_best_effort_step_given_up_leaves_the_tenant_active(plans, settings, monkeypatch):
    settings.PROVISIONING_MAX_RESUMES = 1
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

    def explode(self, ctx, outputs):
        raise RuntimeError("boom after the emails")

    monkeypatch.setattr(SendWelcomeEmails, "on_success", explode)
    tenant = new_tenant()
    assert [drive(tenant) for _ in range(3)] == [
        "resumable: platform error: RuntimeError: boom after the emails",
        "resumable: platform error: RuntimeError: boom after the emails",
        "succeeded",  # past the limit the emails step is given up, as best effort
    ]
    tenant.refresh_from_db()
    run = run_of(tenant)
    assert (tenant.state, run.status, run.error, run.failed_step) == ("active", "succeeded", "", "")
    emails = step_of(tenant, "send_welcome_emails")
    assert (emails.status, emails.error_category) == ("failed", "platform")
    gave_up = AuditEvent.objects.filter(run=run, type="tenant.provisioning.step_completed")
    assert gave_up.filter(details__outcome="failed", details__best_effort=True).exists()
    # Clean up what the test made.
    actions.decommission_tenant(tenant)
    assert drive(tenant) == "decommissioned"


def claim_and_die(run_id: int) -> None:
    """A worker that claims the run and dies before writing anything."""
    assert ledger.claim(run_id, "gone:1:x", ttl=0.01) is not None
    time.sleep(0.03)


def test_a_run_whose_worker_keeps_dying_fails_after_the_limit(plans, settings):
    settings.PROVISIONING_MAX_RESUMES = 1
    tenant = new_tenant()
    run = run_of(tenant)
    claim_and_die(run.pk)  # the first delivery
    claim_and_die(run.pk)  # resume 1
    assert drive(tenant) == "failed"  # resume 2: past the limit, it gives up
    run.refresh_from_db()
    assert (run.status, run.error_category, run.failed_step) == ("failed", "platform", "validate")
    assert run.error == "platform error: the worker stopped 2 times while running Validate request"
    assert step_of(tenant, "validate").status == "compensated"


def test_a_give_up_whose_worker_dies_too_is_abandoned(plans, settings):
    settings.PROVISIONING_MAX_RESUMES = 1
    tenant = new_tenant()
    run = run_of(tenant)
    for _ in range(3):  # the first delivery, resume 1, and the give-up: all died
        claim_and_die(run.pk)
    assert drive(tenant) == "failed: gave up after the resume limit"
    run.refresh_from_db()
    tenant.refresh_from_db()
    assert (tenant.state, run.status, run.error_category) == ("failed", "failed", "platform")
    assert run.error == "platform error: the worker stopped 3 times"
    assert drive(tenant).startswith("not claimed")


# ---------------------------------------------------------------- the budget check


@pytest.mark.parametrize(
    ("budgets", "problem"),
    [
        ([], "must be a JSON object"),
        ("wait_ready", "must be a JSON object"),
        ({"wait_redy": {"attempts": 2}}, "'wait_redy' is not a step"),
        ({"wait_ready": 2}, 'wait_ready: must be an object with "attempts"'),
        ({"wait_ready": {"tries": 2}}, "wait_ready: unknown setting 'tries'"),
        ({"wait_ready": {"attempts": "2"}}, "wait_ready.attempts must be a whole number"),
        ({"wait_ready": {"attempts": 2.0}}, "wait_ready.attempts must be a whole number"),
        ({"wait_ready": {"attempts": True}}, "wait_ready.attempts must be a whole number"),
        ({"wait_ready": {"attempts": 0}}, "wait_ready.attempts must be a whole number"),
        ({"wait_ready": {"attempts": -1}}, "wait_ready.attempts must be a whole number"),
        ({"wait_ready": {"seconds": "45"}}, "wait_ready.seconds must be a number above 0"),
        ({"wait_ready": {"seconds": -5}}, "wait_ready.seconds must be a number above 0"),
        ({"wait_ready": {"seconds": 0}}, "wait_ready.seconds must be a number above 0"),
        ({"wait_ready": {"seconds": float("nan")}}, "wait_ready.seconds must be a number"),
        ({"wait_ready": {"seconds": float("inf")}}, "wait_ready.seconds must be a number"),
        ({"wait_ready": {"seconds": 10**400}}, "wait_ready.seconds must be a number"),
        ({"wait_ready": {"seconds": None}}, "wait_ready.seconds must be a number"),
    ],
)
def test_invalid_budget_shapes_are_refused(budgets, problem):
    with pytest.raises(InvalidBudgets) as refused:
        validate_step_budgets(budgets)
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems


def test_valid_budgets_parse_and_every_problem_is_reported_at_once():
    assert validate_step_budgets(None) == {}
    assert validate_step_budgets({"wait_ready": {"attempts": 2, "seconds": 45}}) == {
        "wait_ready": {"attempts": 2, "seconds": 45.0}
    }
    with pytest.raises(InvalidBudgets) as refused:
        validate_step_budgets({"nope": {}, "validate": {"attempts": 0, "seconds": -1}})
    assert len(refused.value.problems) == 3


# ---------------------------------------------------------------- the admin form


@pytest.fixture
def admin_client(client, plans):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-rootroot"))
    return client


def plan_form_data(plan: Plan, step_budgets: str) -> dict:
    fields = [f for f in Plan._meta.concrete_fields if f.editable and not f.primary_key]
    data = {f.name: getattr(plan, f.name) for f in fields}
    return {**data, "step_budgets": step_budgets}


def test_the_admin_refuses_invalid_step_budgets_with_a_field_error(admin_client):
    plan = Plan.objects.get(name="pro")
    before = plan.step_budgets
    url = reverse("admin:tenants_plan_change", args=[plan.pk])
    bad = json.dumps({"wait_ready": {"attempts": "many", "seconds": -3}, "deploy": {}})
    response = admin_client.post(url, plan_form_data(plan, bad))
    assert response.status_code == 200  # the form again, not a redirect
    errors = response.context["adminform"].form.errors["step_budgets"]
    assert "wait_ready.attempts must be a whole number from 1 to 100" in errors
    assert "wait_ready.seconds must be a number above 0 and at most 86400" in errors
    assert any(e.startswith("'deploy' is not a step") for e in errors)
    plan.refresh_from_db()
    assert plan.step_budgets == before


def test_the_admin_saves_valid_step_budgets(admin_client):
    plan = Plan.objects.get(name="pro")
    url = reverse("admin:tenants_plan_change", args=[plan.pk])
    good = json.dumps({"wait_ready": {"attempts": 4, "seconds": 90}})
    response = admin_client.post(url, plan_form_data(plan, good))
    assert response.status_code == 302
    plan.refresh_from_db()
    assert plan.step_budgets == {"wait_ready": {"attempts": 4, "seconds": 90}}
    response = admin_client.post(url, plan_form_data(plan, ""))
    assert response.status_code == 302
    plan.refresh_from_db()
    assert plan.step_budgets == {}
