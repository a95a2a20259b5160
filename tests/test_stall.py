"""Stall detection: thresholds, the once-only `stalled` event, and "stalled?" on the pages."""

from datetime import timedelta

import pytest
from django.utils import timezone

from console import fragments
from console.presenters.events import summarize_event
from console.presenters.tenant_list import tenant_rows
from provisioning import actions, expectations, ledger, stall
from provisioning.models import AuditEvent, StepRun
from tests.conftest import drive_in_background, new_tenant, wait_for
from tests.views_support import create, run_of, start


@pytest.fixture(autouse=True)
def fresh_cache():
    expectations.clear_cache()
    yield
    expectations.clear_cache()


def stalled_events(tenant):
    return list(AuditEvent.objects.filter(tenant=tenant, type=stall.EVENT).order_by("seq"))


def age(tenant, step_id: str, seconds: float) -> StepRun:
    """Make ``step_id`` look as if it started ``seconds`` ago."""
    step = StepRun.objects.get(run=run_of(tenant), step_id=step_id)
    step.started_at = timezone.now() - timedelta(seconds=seconds)
    step.save(update_fields=["started_at"])
    return step


@pytest.mark.django_db
def test_threshold_is_p95_times_factor_with_a_floor(plans, settings):
    free = plans["free"]
    settings.PROVISIONING_STALL_FACTOR = 3
    settings.PROVISIONING_STALL_FLOOR_SECONDS = 10
    settings.PROVISIONING_STALL_WAIT_FLOOR_SECONDS = 30
    # Defaults: short steps sit on the floor; readiness waits get the longer floor.
    assert stall.threshold("validate", free) == 10
    assert stall.threshold("wait_ready", free) == 30
    p95 = expectations.expectation("deploy_workloads", plans["enterprise"]).p95
    settings.PROVISIONING_STALL_FLOOR_SECONDS = 1
    assert stall.threshold("deploy_workloads", plans["enterprise"]) == pytest.approx(p95 * 3)
    assert stall.RUNBOOK.keys() == {s for s in stall.RUNBOOK}  # every step has a text
    from provisioning.steps import STEP_IDS

    assert set(stall.RUNBOOK) == set(STEP_IDS)


@pytest.mark.django_db
def test_the_pages_show_stalled_from_the_clock_even_without_an_event(operator, settings):
    """A worker that is itself stuck or dead records nothing: the page still says so."""
    settings.PROVISIONING_STALL_FLOOR_SECONDS = 10
    tenant = create(operator)
    start(tenant, "deploy_workloads")
    html = fragments.detail_fragments(tenant, role="operator")
    assert "stalled?" not in html
    assert "stalled?" not in fragments.list_fragments(role="viewer")

    age(tenant, "deploy_workloads", 600)
    html = fragments.detail_fragments(tenant, role="operator")
    assert html.count("stalled?") == 2  # the step line and the timeline row
    assert "Runbook:" in html and stall.RUNBOOK["deploy_workloads"][:40] in html
    assert "Stalled?" in html and "flagged after" in html
    assert "stalled?" in fragments.list_fragments(role="viewer")
    assert tenant_rows()["rows"][0]["summary"]["stalled"] is True
    assert stalled_events(tenant) == []


@pytest.mark.django_db
def test_readiness_waits_get_the_longer_floor(operator, settings):
    settings.PROVISIONING_STALL_FLOOR_SECONDS = 10
    settings.PROVISIONING_STALL_WAIT_FLOOR_SECONDS = 30
    tenant = create(operator)
    start(tenant, "wait_ready")
    age(tenant, "wait_ready", 20)
    assert "stalled?" not in fragments.detail_fragments(tenant, role="viewer")
    age(tenant, "wait_ready", 31)
    assert "stalled?" in fragments.detail_fragments(tenant, role="viewer")


@pytest.mark.django_db
def test_the_heartbeat_check_records_one_event_per_step_run(operator, settings):
    settings.PROVISIONING_STALL_FLOOR_SECONDS = 5
    tenant = create(operator)
    run = run_of(tenant)
    lease = ledger.claim(run.pk, "test-worker", 30)
    assert lease is not None
    step = StepRun.objects.get(run=run, step_id="validate")
    ledger.step_started(lease, step)
    assert stall.check_run(run.pk) == 0  # just started
    age(tenant, "validate", 6)
    assert stall.check_run(run.pk) == 1
    assert stall.check_run(run.pk) == 0  # the marker holds: once only
    [event] = stalled_events(tenant)
    assert event.details["step"] == "validate"
    assert event.details["threshold_s"] == 5
    assert event.details["elapsed_s"] >= 6
    assert "expected_p95_s" in event.details and event.details["action"]
    step.refresh_from_db()
    assert step.stalled_at is not None
    # A cancel requested meanwhile: nothing more is recorded, and nothing raises.
    actions.request_cancel(tenant)
    assert stall.check_run(run.pk) == 0


@pytest.mark.django_db(transaction=True)
def test_a_hang_on_wait_ready_is_flagged_within_the_detection_interval(
    plans, operator, settings, faults_enabled
):
    settings.WORKLOAD_DRIVER = "process"
    settings.PROVISIONING_HEARTBEAT_SECONDS = 0.3  # the detection interval
    settings.PROVISIONING_STALL_FACTOR = 0.01  # so the floor decides
    settings.PROVISIONING_STALL_WAIT_FLOOR_SECONDS = 1.5
    threshold = stall.threshold("wait_ready", plans["free"])
    assert threshold == 1.5
    tenant = new_tenant("stall", user=operator, faults=["wait_ready:hang:5"])
    worker, outcome = drive_in_background(tenant)
    try:
        event = wait_for(
            lambda: AuditEvent.objects.filter(tenant=tenant, type=stall.EVENT).first(),
            timeout=30,
            message="the stalled event",
        )
        step = StepRun.objects.get(run__tenant=tenant, step_id="wait_ready")
        assert step.status == "running"
        flagged_after = (event.created_at - step.started_at).total_seconds()
        assert threshold < flagged_after <= threshold + 0.3 + 1.0, flagged_after
        # The page says so while the step still hangs, with the runbook.
        html = fragments.detail_fragments(tenant, role="operator")
        assert "stalled?" in html and "Replicas are not answering" in html
        assert "stalled?" in fragments.list_fragments(role="operator")
        summary = summarize_event(event)
        assert "stalled" in summary.lower()
    finally:
        worker.join(timeout=60)
    assert outcome["result"] == "succeeded"
    [event] = stalled_events(tenant)  # exactly one, though many beats passed
    assert event.details["step"] == "wait_ready"
    assert event.details["threshold_s"] == 1.5
    assert event.details["action"] == stall.RUNBOOK["wait_ready"]
    assert StepRun.objects.get(run__tenant=tenant, step_id="wait_ready").stalled_at
    # Done: nothing is "stalled?" any more.
    assert "stalled?" not in fragments.detail_fragments(tenant, role="operator")
