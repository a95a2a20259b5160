"""The runner under a real `qcluster`: crashes, duplicate deliveries, the commands."""

import json
import subprocess
import sys
import time

import pytest
from django_q.tasks import async_task

from provisioning import actions
from provisioning.drivers import get_driver
from provisioning.models import AuditEvent, StepRun
from provisioning.steps import STEP_IDS
from tenants.models import Tenant
from tests.conftest import ROOT, new_tenant, subprocess_env, wait_for, wait_for_step

pytestmark = [pytest.mark.cluster, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def settle(tenant, timeout=60):
    def done():
        tenant.refresh_from_db()
        run = actions.latest_run(tenant)
        return not run.is_live and tenant.state != "provisioning"

    wait_for(done, timeout=timeout, message=f"{tenant.slug} to settle")
    return tenant


def manage(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cleanup(tenant):
    tenant.refresh_from_db()
    if tenant.state in ("active", "failed"):
        actions.decommission_tenant(tenant)
        settle(tenant)


def test_a_crashed_worker_is_resumed_without_duplicate_containers(
    plans, faults_enabled, cluster_factory
):
    cluster = cluster_factory(PROVISIONING_LEASE_SECONDS=5)
    tenant = new_tenant("crashy", plan="pro", faults=["deploy_workloads:crash:1"])
    settle(tenant, timeout=90)
    assert tenant.state == "active", cluster.log_path.read_text()[-3000:]
    replicas = get_driver().list_replicas(tenant.key)
    assert len(replicas) == plans["pro"].replicas == 2
    deploy = StepRun.objects.get(run__tenant=tenant, step_id="deploy_workloads")
    assert deploy.attempts == 2  # the crashed attempt, then the resumed one
    run = actions.latest_run(tenant)
    assert run.faults[0]["used"] == 1
    cleanup(tenant)
    assert get_driver().list_replicas(tenant.key) == []


def test_a_task_delivered_twice_runs_each_step_once(plans, faults_enabled, cluster_factory):
    cluster_factory("first")
    cluster_factory("second")
    # A slow first step keeps the first worker inside the run while the
    # duplicate arrives at the other cluster.
    tenant = new_tenant("twice", faults=["validate:hang:2"])
    run = actions.latest_run(tenant)
    async_task("provisioning.tasks.advance_run", run.pk, task_name="duplicate-delivery")
    settle(tenant)
    assert tenant.state == "active"
    started = list(
        AuditEvent.objects.filter(
            tenant=tenant, type="tenant.provisioning.step_started"
        ).values_list("details__step", flat=True)
    )
    assert sorted(started) == sorted(STEP_IDS)  # each step ran exactly once
    assert set(run.steps.values_list("attempts", flat=True)) == {1}

    from django_q.models import Task

    # The create's own task is not sent when a pump is listening for new runs
    # (queue.enqueue_run), so one or two advance_run deliveries finish.
    def deliveries():
        done = Task.objects.filter(func="provisioning.tasks.advance_run")
        return (
            list(done.values_list("name", "result"))
            if done.filter(name="duplicate-delivery").exists()
            else None
        )

    results = [result for _, result in wait_for(deliveries, timeout=20, message="the duplicate")]
    # Each task advances every due run it can claim, so one may have taken the
    # run at some park (result e.g. "parked 3, succeeded 1"); no claim ran a
    # step twice (above), and at most one of them finished the run (a
    # listening pump may have finished it instead).
    assert sum(result.count("succeeded") for result in results) <= 1, results
    cleanup(tenant)


def test_provision_command_waits_until_active_and_prints_the_status_json(
    plans, faults_enabled, cluster_factory
):
    cluster_factory()
    started = time.monotonic()
    done = manage(
        "provision_tenant", "acme", "--org", "demo", "--plan", "free",
        "--admin-email", "a@example.com", "--wait", "--json",
    )  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["state"] == "active"
    assert [s["status"] for s in status["steps"]] == ["succeeded"] * 9
    assert took < 30
    shown = manage("tenant_status", "acme", "--json")
    assert json.loads(shown.stdout)["state"] == "active"
    gone = manage("decommission_tenant", "acme", "--wait")
    assert gone.returncode == 0, gone.stderr
    assert Tenant.objects.get(slug="acme").state == "decommissioned"


def test_cancel_command_stops_a_hanging_run_within_seconds(plans, faults_enabled, cluster_factory):
    cluster_factory()
    tenant = new_tenant("hangs", faults=["deploy_workloads:hang:60"])
    wait_for_step(tenant, "deploy_workloads", timeout=30)
    started = time.monotonic()
    cancelled = manage("cancel_provisioning", "hangs", "--reason", "stuck")
    assert cancelled.returncode == 0, cancelled.stderr
    settle(tenant, timeout=30)
    took = time.monotonic() - started
    assert tenant.state == "failed"
    run = actions.latest_run(tenant)
    assert run.cancelled
    assert took < 6, f"cancel took {took:.1f}s"
    assert get_driver().list_replicas(tenant.key) == []
    assert (
        AuditEvent.objects.filter(tenant=tenant).order_by("-seq").first().type
        == "tenant.provisioning.cancelled"
    )


def test_cancels_at_any_moment_of_a_run_settle_cleanly(plans, cluster_factory):
    """Cancel at ten moments from "just created" to "nearly active".

    Each cancel either lands (the run compensates and nothing is left) or is
    refused because the tenant is already active; the worker never hits a
    database error such as a deadlock between the cancel and its own writes.
    """
    cluster = cluster_factory()
    landed = []
    for i, delay in enumerate([0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0]):
        tenant = new_tenant(f"race{i}")
        time.sleep(delay)
        try:
            actions.request_cancel(tenant)
        except actions.ActionError as refused:
            assert "only a tenant that is provisioning" in str(refused)
        settle(tenant, timeout=30)
        run = actions.latest_run(tenant)
        if run.cancelled:
            undone = run.steps.filter(status="compensated").order_by("-position").first()
            landed.append(undone.step_id if undone else "before any step")
            assert tenant.state == "failed"
            assert get_driver().list_replicas(tenant.key) == []
        else:
            assert tenant.state == "active"
        cleanup(tenant)
    from django_q.models import Task

    failed_tasks = list(Task.objects.filter(success=False).values_list("func", "result"))
    assert failed_tasks == []
    log = cluster.log_path.read_text()
    for sign in ("deadlock", "OperationalError", "DatabaseError", "IntegrityError"):
        assert sign not in log, log[-3000:]
    assert landed, "no cancel landed: every run finished before its cancel"


def test_the_create_request_returns_as_fast_for_a_slow_saga_as_for_a_fast_one(
    plans, faults_enabled, cluster_factory, client, operator
):
    cluster_factory()
    client.force_login(operator)

    def create(slug, faults=""):
        form = {"slug": slug, "org": "demo", "plan": "free", "admin_email": "a@example.com"}
        started = time.monotonic()
        response = client.post("/tenants/new/", {**form, "faults": faults})
        took = time.monotonic() - started
        assert response.status_code == 302, response.content[:500]
        return took

    fast = create("quick")
    slow = create("sleepy", "deploy_workloads:hang:30")
    sleepy = Tenant.objects.get(slug="sleepy")
    # The worker is inside the 30 s hang while the request has long returned.
    wait_for_step(sleepy, "deploy_workloads", timeout=20)
    assert slow < 2 and slow < fast + 0.5, f"fast {fast:.3f}s, slow {slow:.3f}s"
    actions.request_cancel(sleepy)
    settle(sleepy)
    quick = settle(Tenant.objects.get(slug="quick"))
    assert quick.state == "active"
    cleanup(quick)
