"""The saga engine, driven in this process against real PostgreSQL and the workload driver."""

import time
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from provisioning import actions, engine, ledger
from provisioning.drivers import get_driver
from provisioning.errors import Fenced
from provisioning.models import AuditEvent, ProvisioningRun, Route, StepRun, TenantIdentity
from provisioning.status import tenant_status
from provisioning.steps import STEP_IDS
from provisioning.steps.schema import existing_tables
from provisioning.steps.storage import schema_exists
from tests.conftest import drive, drive_in_background, new_tenant, wait_for_step

pytestmark = pytest.mark.django_db(transaction=True)


def status_of(tenant):
    tenant.refresh_from_db()
    return tenant_status(tenant)


def events(tenant, prefix="tenant."):
    return list(
        AuditEvent.objects.filter(tenant=tenant, type__startswith=prefix)
        .order_by("seq")
        .values_list("type", "details")
    )


def assert_nothing_left(tenant):
    driver = get_driver()
    assert driver.list_replicas(tenant.key) == []
    assert driver.find_network(tenant.key) is None
    assert not schema_exists(tenant.schema_name)
    assert not Route.objects.filter(tenant=tenant).exists()
    assert not TenantIdentity.objects.filter(tenant=tenant).exists()


def test_it_provisions_a_tenant_to_active(plans, settings, tmp_path):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    tenant = new_tenant()
    assert drive(tenant) == "succeeded"
    tenant.refresh_from_db()
    status = status_of(tenant)
    assert status["state"] == "active"
    assert [s["status"] for s in status["steps"]] == ["succeeded"] * 9
    assert [s["id"] for s in status["steps"]] == STEP_IDS
    replicas = get_driver().list_replicas(tenant.key)
    assert len(replicas) == 1 and replicas[0].state == "running"
    assert {"users", "settings", "projects"} <= existing_tables(tenant.schema_name)
    assert Route.objects.get(tenant=tenant).enabled
    assert [m.to for m in mail.outbox] == [["admin@example.com"]] * 3
    assert f"{settings.SITE_URL}/signin/" in mail.outbox[1].body  # tests/test_signin.py
    types = [t for t, _ in events(tenant)]
    assert types[:3] == [
        "tenant.created",
        "tenant.provisioning.started",
        "tenant.provisioning.step_started",
    ]
    assert "tenant.provisioning.completed" in types
    ready = next(s for s in status["steps"] if s["id"] == "wait_ready")
    assert ready["progress"]["message"] == "1/1 replicas ready"
    assert ready["progress"]["replicas"][0]["state"] == "ready"
    probes = StepRun.objects.get(run__tenant=tenant, step_id="wait_ready").log_lines.all()
    assert any("/healthz -> 200" in line.message for line in probes)
    # Clean up what the test made.
    actions.decommission_tenant(tenant)
    assert drive(tenant) == "decommissioned"
    assert_nothing_left(tenant)


def test_it_retries_a_transient_error_with_backoff(plans, faults_enabled, fast_backoff):
    tenant = new_tenant(faults=["seed_schema:transient:2"])
    drive(tenant)
    status = status_of(tenant)
    assert status["state"] == "active"
    seed = next(s for s in status["steps"] if s["id"] == "seed_schema")
    assert seed["attempts"] == 3
    retrying = [d for t, d in events(tenant) if t == "tenant.provisioning.step_retrying"]
    assert [(d["step"], d["attempt"]) for d in retrying] == [("seed_schema", 1), ("seed_schema", 2)]
    assert all(d["next_attempt_at"] for d in retrying)
    actions.decommission_tenant(tenant)
    drive(tenant)


def test_a_permanent_error_compensates_in_reverse_order(plans, faults_enabled):
    tenant = new_tenant(faults=["deploy_workloads:permanent"])
    assert drive(tenant) == "failed"
    tenant.refresh_from_db()
    status = status_of(tenant)
    assert status["state"] == "failed"
    assert status["failed_step"] == "deploy_workloads", status["error"]
    assert "injected permanent fault" in status["error"]
    deploy = StepRun.objects.get(run__tenant=tenant, step_id="deploy_workloads")
    assert deploy.attempts == 1  # permanent: no retry
    compensated = [d["step"] for t, d in events(tenant) if t == "tenant.provisioning.compensated"]
    assert compensated == list(reversed(STEP_IDS[:6]))
    assert events(tenant)[-1][0] == "tenant.provisioning.failed"
    assert_nothing_left(tenant)


def test_transient_errors_past_the_budget_fail_the_step(plans, faults_enabled, fast_backoff):
    tenant = new_tenant(faults=["allocate_storage:transient:10"])
    assert drive(tenant) == "failed"
    step = StepRun.objects.get(run__tenant=tenant, step_id="allocate_storage")
    assert step.attempts == 3  # the step's budget
    assert status_of(tenant)["failed_step"] == "allocate_storage"
    assert_nothing_left(tenant)


def test_cancel_during_a_hang_compensates_within_seconds(plans, faults_enabled):
    tenant = new_tenant(faults=["deploy_workloads:hang:60"])
    worker, outcome = drive_in_background(tenant)
    wait_for_step(tenant, "deploy_workloads", timeout=30)
    cancelled_at = time.monotonic()
    actions.request_cancel(tenant, reason="testing")
    worker.join(timeout=30)
    took = time.monotonic() - cancelled_at
    assert outcome["result"] == "cancelled"
    assert took < 5, f"cancel took {took:.1f}s"
    status = status_of(tenant)
    assert status["state"] == "failed" and status["cancelled"] is True
    types = [t for t, _ in events(tenant)]
    assert "tenant.provisioning.cancel_requested" in types
    assert types[-1] == "tenant.provisioning.cancelled"
    assert_nothing_left(tenant)


def test_a_second_cancel_says_it_is_under_way_and_cancel_of_an_active_tenant_is_refused(plans):
    tenant = new_tenant()
    actions.request_cancel(tenant)
    with pytest.raises(actions.AlreadyUnderWay):
        actions.request_cancel(tenant)
    drive(tenant)
    tenant.refresh_from_db()
    assert tenant.state == "failed"
    with pytest.raises(actions.ActionError, match="only a tenant that is provisioning"):
        actions.request_cancel(tenant)


def test_reset_is_refused_while_a_worker_holds_the_lease(plans):
    tenant = new_tenant()
    run = actions.latest_run(tenant)
    lease = ledger.claim(run.pk, "someone:1:x", ttl=30)
    assert lease is not None
    with pytest.raises(actions.ActionError, match="holds its lease"):
        actions.reset_provisioning(tenant)
    run.refresh_from_db()
    assert run.reset_at is None


def test_reset_of_a_run_whose_worker_died_fences_that_worker(plans):
    tenant = new_tenant()
    run = actions.latest_run(tenant)
    lease = ledger.claim(run.pk, "dead:1:x", ttl=0.01)
    time.sleep(0.05)  # the lease expires: the worker is gone
    actions.reset_provisioning(tenant, reason="worker died")
    with pytest.raises(Fenced):
        ledger.step_started(lease, run.steps.first())
    assert events(tenant)[-1][0] == "tenant.provisioning.reset"
    # The next worker undoes what the run made, and it ends failed.
    run.refresh_from_db()
    assert run.status == "compensating" and run.reset_at is not None
    with pytest.raises(actions.ActionError, match="already reset; a worker is undoing"):
        actions.reset_provisioning(tenant)
    assert drive(tenant) == "failed"
    tenant.refresh_from_db()
    assert tenant.state == "failed"
    assert events(tenant)[-1][0] == "tenant.provisioning.failed"


def test_a_reset_after_the_worker_died_mid_saga_undoes_what_the_run_made(
    plans, faults_enabled, settings
):
    """Found by tests/test_fuzz_operations.py: the reset ended the run on the spot, the
    interrupted step stayed running and its work (and the earlier steps') stayed, which
    reconcile reported as orphans of a failed tenant."""
    from provisioning import reconcile
    from provisioning.drivers import clear_cache
    from tests.crash_support import resource_problems, resources

    settings.WORKLOAD_DRIVER = "process"
    clear_cache()
    tenant = new_tenant(faults=["deploy_workloads:hang:30"])
    run = actions.latest_run(tenant)
    assert engine.advance(run.pk) == "parked"  # inside deploy_workloads
    # Its worker then died holding it: a lease that expired, no wake time.
    ProvisioningRun.objects.filter(pk=run.pk).update(
        wake_at=None, wait_reason="", lease_owner="dead:1:x",
        lease_expires_at=timezone.now() - timedelta(seconds=5),
    )  # fmt: skip
    assert resources(tenant)["schema"] == 1 and resources(tenant)["network"] == 1
    actions.reset_provisioning(tenant, reason="worker died")
    assert drive(tenant) == "failed"
    tenant.refresh_from_db()
    run.refresh_from_db()
    assert tenant.state == "failed" and run.failed_step == "deploy_workloads"
    statuses = set(run.steps.values_list("status", flat=True))
    assert statuses <= {"compensated", "pending"}, statuses
    assert resource_problems(tenant, resources(tenant)) == []
    # This tenant's findings: earlier tests in this process may leave theirs.
    assert [f for f in reconcile.find_drift().findings if f.tenant_id == tenant.pk] == []
    assert [t for t, _ in events(tenant)][-2:] == [
        "tenant.provisioning.compensated",
        "tenant.provisioning.failed",
    ]


def test_a_stale_lease_cannot_write_after_another_worker_claims(plans):
    tenant = new_tenant()
    run = actions.latest_run(tenant)
    old = ledger.claim(run.pk, "old:1:x", ttl=0.01)
    time.sleep(0.05)
    new = ledger.claim(run.pk, "new:2:y", ttl=30)
    assert new.fence == old.fence + 1
    step = run.steps.first()
    with pytest.raises(Fenced):
        ledger.step_succeeded(old, step, {"from": "old"})
    ledger.step_started(new, step)
    step.refresh_from_db()
    assert step.status == "running" and step.outputs == {}


def test_a_live_lease_refuses_a_second_claim(plans):
    tenant = new_tenant()
    run = actions.latest_run(tenant)
    assert ledger.claim(run.pk, "a:1:x", ttl=30) is not None
    assert ledger.claim(run.pk, "b:2:y", ttl=30) is None
    assert engine.advance(run.pk).startswith("not claimed")


def test_retry_after_compensation_starts_from_the_top(plans, faults_enabled):
    tenant = new_tenant(faults=["deploy_workloads:permanent"])
    drive(tenant)
    run = actions.retry_provisioning(tenant, reason="fault removed")
    assert run.attempt == 2
    assert set(run.steps.values_list("status", flat=True)) == {"pending"}
    assert drive(tenant) == "succeeded"
    tenant.refresh_from_db()
    assert tenant.state == "active" and status_of(tenant)["attempt"] == 2
    retried = [d for t, d in events(tenant) if t == "tenant.provisioning.retried"]
    assert retried[0]["resumes_at"] == "validate"
    actions.decommission_tenant(tenant)
    drive(tenant)


def test_retry_resumes_at_the_failed_step_when_earlier_work_is_intact(plans, faults_enabled):
    tenant = new_tenant(faults=["deploy_workloads:permanent"])
    run = actions.latest_run(tenant)
    # Run the first five steps, then fail as a worker would if compensation
    # never happened (for example the worker died and the run was reset... no:
    # a reset starts clean). Simulate: record steps 1-5 done and the run failed.
    lease = ledger.claim(run.pk, "w:1:x", ttl=30)
    state = engine.RunState(lease)
    from provisioning.steps import STEPS

    step_runs = list(run.steps.order_by("position"))
    ledger.step_started(lease, step_runs[0])
    for n, step in enumerate(STEPS[:5]):
        # Each success starts the next step in the same commit, as the engine does.
        assert engine._run_step(state, run, step_runs[n], step, step_runs[n + 1]) == "succeeded"
    ledger.run_failed(lease)
    tenant.refresh_from_db()
    retry = actions.retry_provisioning(tenant)
    statuses = list(retry.steps.order_by("position").values_list("status", flat=True))
    assert statuses == ["skipped"] * 5 + ["pending"] * 4
    assert drive(tenant) == "succeeded"
    actions.decommission_tenant(tenant)
    drive(tenant)
    assert_nothing_left(tenant)


def test_retry_after_reset_starts_from_the_top_even_if_work_is_intact(plans):
    tenant = new_tenant()
    run = actions.latest_run(tenant)
    lease = ledger.claim(run.pk, "w:1:x", ttl=30)
    state = engine.RunState(lease)
    from provisioning.steps import STEPS

    first, second = run.steps.order_by("position")[:2]
    ledger.step_started(lease, first)
    engine._run_step(state, run, first, STEPS[0], second)
    ledger.run_failed(lease)
    actions.reset_provisioning(tenant)
    retry = actions.retry_provisioning(tenant)
    assert set(retry.steps.values_list("status", flat=True)) == {"pending"}


def test_retry_past_three_failures_needs_force(plans, faults_enabled):
    tenant = new_tenant(faults=["validate:permanent"])
    drive(tenant)
    for _ in range(2):
        run = actions.retry_provisioning(tenant)
        ProvisioningRun.objects.filter(pk=run.pk).update(
            faults=[{"step": "validate", "kind": "permanent", "n": 1, "used": 0}]
        )
        drive(tenant)
    tenant.refresh_from_db()
    assert actions.failed_attempts(tenant) == 3
    with pytest.raises(actions.ActionError, match="--force"):
        actions.retry_provisioning(tenant)
    run = actions.retry_provisioning(tenant, force=True)
    assert run.attempt == 4
    assert [d["forced"] for t, d in events(tenant) if t.endswith(".retried")] == [
        False,
        False,
        True,
    ]


def test_operations_in_the_wrong_state_are_refused_and_change_nothing(plans):
    tenant = new_tenant()
    before = AuditEvent.objects.count()
    with pytest.raises(actions.AlreadyUnderWay, match="already provisioning"):
        actions.retry_provisioning(tenant)
    with pytest.raises(actions.ActionError, match="cancel it first"):
        actions.decommission_tenant(tenant)
    with pytest.raises(actions.ActionError, match="only a failed tenant can be reset"):
        ProvisioningRun.objects.update(status="succeeded")
        actions.reset_provisioning(tenant)
    assert AuditEvent.objects.count() == before
    tenant.refresh_from_db()
    assert tenant.state == "provisioning"


def test_decommission_frees_the_slug(plans):
    tenant = new_tenant()
    drive(tenant)
    actions.decommission_tenant(tenant, reason="done")
    assert drive(tenant) == "decommissioned"
    tenant.refresh_from_db()
    assert tenant.state == "decommissioned"
    assert_nothing_left(tenant)
    types = [t for t, _ in events(tenant)]
    assert types[-1] == "tenant.decommission.completed"
    again = new_tenant()
    assert again.pk != tenant.pk
    with pytest.raises(actions.ActionError, match="already decommissioned"):
        actions.decommission_tenant(tenant)
    drive(again)
    actions.decommission_tenant(again)
    drive(again)


def test_welcome_emails_are_never_sent_twice(plans, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    tenant = new_tenant()
    drive(tenant)
    assert len(mail.outbox) == 3
    run = actions.latest_run(tenant)
    # Re-run the email step as a resumed run would.
    StepRun.objects.filter(run=run, step_id="send_welcome_emails").update(status="pending")
    ProvisioningRun.objects.filter(pk=run.pk).update(status="running", lease_expires_at=None)
    drive(tenant)
    assert len(mail.outbox) == 3
    step = StepRun.objects.get(run=run, step_id="send_welcome_emails")
    assert step.outputs["already_sent"] == ["welcome", "console", "onboarding"]
    actions.decommission_tenant(tenant)
    drive(tenant)


def test_a_run_whose_recorded_steps_no_longer_match_the_code_refuses_to_go_on(plans):
    tenant = new_tenant()
    run = actions.latest_run(tenant)
    StepRun.objects.filter(run=run, position=2).update(step_id="renamed_step")
    # A platform error (tests/test_poison_runs.py): on record, nothing run, resumed later.
    assert drive(tenant).startswith("resumable: platform error: StepMismatch: ")
    run.refresh_from_db()
    assert run.error_category == "platform" and "'renamed_step' at position 2" in run.error
    assert not run.steps.exclude(status="pending").exists()
    assert run.lease_owner == "" and run.status == "running"


def test_an_expired_lease_cannot_write_even_when_nobody_claimed_the_run(plans):
    tenant = new_tenant()
    run = actions.latest_run(tenant)
    lease = ledger.claim(run.pk, "slow:1:x", ttl=0.01)
    time.sleep(0.05)
    with pytest.raises(Fenced, match="expired"):
        ledger.step_started(lease, run.steps.first())


def test_progress_and_results_are_refused_once_cancel_is_requested(plans):
    from provisioning.errors import Cancelled

    tenant = new_tenant()
    run = actions.latest_run(tenant)
    lease = ledger.claim(run.pk, "w:1:x", ttl=30)
    step = run.steps.get(position=1)
    ledger.step_started(lease, step)
    actions.request_cancel(tenant)
    with pytest.raises(Cancelled):
        ledger.step_progress(lease, step, {"message": "late"})
    with pytest.raises(Cancelled):
        ledger.step_succeeded(lease, step, {"late": True})
    step.refresh_from_db()
    assert step.status == "running" and step.progress == {} and step.outputs == {}
    ledger.step_compensating(lease, step)  # carrying the cancel out is allowed


def test_decommission_waits_for_a_run_that_is_still_finishing(plans):
    tenant = new_tenant()
    run = actions.latest_run(tenant)
    # Active, but the run is still sending welcome emails.
    tenant.__class__.objects.filter(pk=tenant.pk).update(state="active")
    tenant.refresh_from_db()
    assert run.is_live
    allowed, why = actions.allowed_actions(tenant)["decommission"]
    assert not allowed and "still finishing" in why
    with pytest.raises(actions.ActionError, match="still finishing"):
        actions.decommission_tenant(tenant)
    assert actions.latest_run(tenant).pk == run.pk


def test_a_cancel_racing_a_workers_write_waits_instead_of_deadlocking(plans):
    """An operator's action and the worker's write never deadlock.

    The action takes the tenant's lock and, a moment later, writes the run;
    meanwhile the worker starts a step. With locks taken in opposite orders
    PostgreSQL detects a deadlock and kills one side (CI once saw this through
    the console's Cancel). The worker's step writes lock only the run row (the
    audit insert's key-share on the tenant does not conflict with the
    action's no-key lock), so either the worker's write commits first and the
    cancel follows, or the worker finds the cancel: both commit, in one order.
    """
    import threading

    from django.db import connection, transaction

    from provisioning.errors import Cancelled
    from tenants.models import Tenant

    tenant = new_tenant()
    run = actions.latest_run(tenant)
    lease = ledger.claim(run.pk, "w:1:x", ttl=30)
    step = run.steps.get(position=1)
    holding, outcome = threading.Event(), {}

    def operator():
        try:
            with transaction.atomic():
                Tenant.objects.lock(pk=tenant.pk)
                holding.set()
                time.sleep(0.5)  # the worker's write arrives in between
                ProvisioningRun.objects.filter(pk=run.pk).update(cancel_requested=True)
                AuditEvent.objects.create(type="test.cancel", tenant=tenant, run=run)
            outcome["operator"] = "committed"
        except Exception as error:  # noqa: BLE001 - the test reports what happened
            outcome["operator"] = repr(error)
        finally:
            connection.close()

    thread = threading.Thread(target=operator)
    thread.start()
    assert holding.wait(5)
    try:
        ledger.step_started(lease, step)
        outcome["worker"] = "wrote"
    except Cancelled:
        outcome["worker"] = "saw the cancel"
    except Exception as error:  # noqa: BLE001
        outcome["worker"] = repr(error)
    thread.join(10)
    assert outcome["operator"] == "committed"
    step.refresh_from_db()
    if outcome["worker"] == "wrote":
        assert step.status == "running"
        run.refresh_from_db()
        assert run.cancel_requested  # the cancel came after, for the engine to carry out
    else:
        assert outcome["worker"] == "saw the cancel"
        assert step.status == "pending"
