"""Waits park the run and hold no worker; pumps continue parked runs when due.

The first tests drive the engine in this process; those marked ``cluster``
run real qclusters (Q_WORKERS=2) with the Docker driver, and print the
figures they measure (run pytest with -s to see them).
"""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from provisioning import actions, engine, ledger, reaper, stall
from provisioning.drivers import get_driver
from provisioning.models import AuditEvent, ProvisioningRun, StepRun
from provisioning.status import tenant_status
from provisioning.steps import STEP_IDS
from tenants.models import Tenant
from tests.conftest import ROOT, drive, new_tenant, subprocess_env, wait_for
from tests.docker_support import require_docker

pytestmark = pytest.mark.django_db(transaction=True)


def run_of(tenant) -> ProvisioningRun:
    return actions.latest_run(tenant)


def step_of(tenant, step_id) -> StepRun:
    return StepRun.objects.get(run=run_of(tenant), step_id=step_id)


def started(tenant) -> list[str]:
    return list(
        AuditEvent.objects.filter(tenant=tenant, type="tenant.provisioning.step_started")
        .order_by("seq")
        .values_list("details__step", flat=True)
    )


# ------------------------------------------------------------ in this process


def test_a_hang_parks_the_run_and_lets_go_of_the_lease(plans, faults_enabled, settings):
    settings.WORKLOAD_DRIVER = "process"
    tenant = new_tenant(faults=["validate:hang:30"])
    run = run_of(tenant)
    assert engine.advance(run.pk) == "parked"
    run.refresh_from_db()
    assert run.lease_owner == "" and run.lease_expires_at is None
    assert run.status == "running" and run.is_parked
    assert run.wait_reason == "injected hang at validate"
    assert 29 < (run.wake_at - timezone.now()).total_seconds() <= 30
    step = step_of(tenant, "validate")
    assert step.status == "running" and step.attempts == 1
    assert step.progress["message"] == "injected hang of 30s"
    assert step.progress["next_check_at"] == run.wake_at.isoformat()
    # Not due: a second delivery, a pump and the reaper all leave it alone.
    assert engine.advance(run.pk) == engine.NOT_CLAIMED
    assert ledger.claim_due("pump:1:x", 15) is None
    assert not reaper.unattended().exists()
    assert 29 < ledger.next_wake() <= 30

    # Due a while ago with nobody claiming it: the reaper enqueues it, and a
    # claim goes on with the same attempt, counting no resume.
    ProvisioningRun.objects.filter(pk=run.pk).update(wake_at=timezone.now() - timedelta(seconds=5))
    assert list(reaper.unattended().values_list("pk", flat=True)) == [run.pk]
    assert drive(tenant) == "succeeded"
    run.refresh_from_db()
    assert run.resumes == 0 and run.wake_at is None and run.wait_reason == ""
    assert started(tenant) == STEP_IDS  # validate started once, across its park
    actions.decommission_tenant(tenant)
    drive(tenant)


def test_the_retry_backoff_parks_the_run(plans, faults_enabled, settings):
    settings.WORKLOAD_DRIVER = "process"
    settings.PROVISIONING_BACKOFF_BASE = settings.PROVISIONING_BACKOFF_MAX = 20
    tenant = new_tenant(faults=["allocate_storage:transient:1"])
    run = run_of(tenant)
    assert engine.advance(run.pk) == "parked"
    run.refresh_from_db()
    step = step_of(tenant, "allocate_storage")
    assert step.status == "retrying" and step.attempts == 1
    assert run.wake_at == step.next_attempt_at and not run.lease_owner
    assert run.wait_reason == "retrying Allocate storage after attempt 1 failed"
    assert 9 < (run.wake_at - timezone.now()).total_seconds() <= 20  # equal jitter: 10..20
    ProvisioningRun.objects.filter(pk=run.pk).update(wake_at=timezone.now())
    assert drive(tenant) == "succeeded"
    assert step_of(tenant, "allocate_storage").attempts == 2
    actions.decommission_tenant(tenant)
    drive(tenant)


def test_a_parked_step_shows_as_running_with_its_reason_and_next_check(
    plans, faults_enabled, settings, capsys
):
    from console import fragments

    tenant = new_tenant(faults=["validate:hang:30"])
    call_command("tenant_status", tenant.slug)
    assert "waiting for a worker" in capsys.readouterr().out  # nobody claimed it yet
    engine.advance(run_of(tenant).pk)
    status = tenant_status(tenant)
    assert status["current_step"] == "validate"
    assert status["steps"][0]["status"] == "running"
    wake_at = run_of(tenant).wake_at
    assert status["waiting"] == {
        "for": "check",
        "reason": "injected hang at validate",
        "next_check_at": wake_at.isoformat().replace("+00:00", "Z"),
    }
    call_command("tenant_status", tenant.slug)
    text = capsys.readouterr().out
    clock = wake_at.strftime("%H:%M:%S")
    assert f"waiting: injected hang at validate; next check at {clock} UTC" in text
    assert "waiting for a worker" not in text
    html = fragments.detail_fragments(tenant, role="operator")
    assert 'class="spinner"' in html
    assert f'next check at <time datetime="{wake_at.isoformat()}">{clock}</time>' in html
    assert "injected hang of 30s" in html

    # A cancel makes it due at once, in the cancel's own transaction.
    actions.request_cancel(tenant)
    run = run_of(tenant)
    assert run.wake_at <= timezone.now() and run.cancel_requested
    assert ledger.claim_due("pump:1:x", 15).run_id == run.pk


def test_reset_refuses_a_parked_run(plans, faults_enabled):
    tenant = new_tenant(faults=["validate:hang:30"])
    engine.advance(run_of(tenant).pk)
    with pytest.raises(actions.ActionError, match="is waiting .* will go on by itself"):
        actions.reset_provisioning(tenant)
    assert run_of(tenant).reset_at is None


def test_a_pump_waits_for_a_parked_run_and_returns_when_none_is_left(
    plans, faults_enabled, settings
):
    """One task, in this process: its run parks twice and the pump carries it through.

    With one worker no pump listens for new runs (engine.listening), so it
    returns as soon as nothing is parked."""
    settings.WORKLOAD_DRIVER = "process"
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 1}
    tenant = new_tenant(faults=["validate:hang:1", "allocate_network:hang:1"])
    began = time.monotonic()
    result = engine.pump(run_of(tenant).pk)
    assert time.monotonic() - began < 15
    assert result.startswith("parked ") and "succeeded 1" in result, result
    tenant.refresh_from_db()
    assert tenant.state == "active"
    assert started(tenant) == STEP_IDS
    actions.decommission_tenant(tenant)
    drive(tenant)


def test_a_listening_pump_claims_a_new_run_at_once_and_stops_with_its_cluster(
    plans, settings, monkeypatch, task_queue
):
    """With two workers a pump waits even when nothing is parked, and claims a new
    run as its create commits; its cluster's stop (the qcluster command's
    signal handler calls announce_stop) frees its worker at once."""
    import threading

    settings.WORKLOAD_DRIVER = "process"
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 2, "sync": False}
    monkeypatch.setenv(engine.CLUSTER_ENV, "test-host:1")
    outcome = {}

    def pump():
        from django.db import connection

        try:
            outcome["result"] = engine.pump()
        finally:
            connection.close()  # this thread's own

    pumping = threading.Thread(target=pump)
    pumping.start()
    try:
        wait_for(lambda: _waiter_lock_held(), timeout=10, message="the pump to wait")
        tenant = new_tenant(slug="listened")
        assert task_queue.queue_size() == 0  # the create sent no task: the pump listens
        wait_for(lambda: run_of(tenant).started_at, timeout=5, message="a claim")
        run = run_of(tenant)
        late = (run.started_at - run.created_at).total_seconds()
        print(f"\nclaimed {late * 1000:.1f} ms after the create committed")
        assert late < 0.5  # the queue's poll alone is 100 ms, and nothing was enqueued here
        wait_for(lambda: run_of(tenant).status == "succeeded", timeout=30, message="the run")
        assert pumping.is_alive()  # still listening
        began = time.monotonic()
        engine.announce_stop()
        pumping.join(5)
        assert not pumping.is_alive() and time.monotonic() - began < 2
        assert outcome["result"] == "succeeded 1"
    finally:
        engine.announce_stop()
        pumping.join(10)
    actions.decommission_tenant(tenant)
    drive(tenant)


def test_a_pump_that_goes_to_wait_after_its_cluster_said_stop_returns_at_once(
    plans, settings, monkeypatch, task_queue
):
    """The stop's notification wakes the pump waiting then; a worker busy at that
    moment starts waiting later, and its cluster's flag sends it home too (a
    stopping qcluster waited 15 s for it, django-q2's stop being graceful)."""
    settings.WORKLOAD_DRIVER = "process"
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 2, "sync": False}
    monkeypatch.setenv(engine.CLUSTER_ENV, "")  # restored afterwards: mark_cluster sets it
    monkeypatch.setattr(engine, "_stopping", None)
    engine.mark_cluster()
    assert not engine.cluster_stopping()
    engine.announce_stop()
    assert engine.cluster_stopping()
    began = time.monotonic()
    assert engine.pump() == engine.NOT_CLAIMED  # listening, yet it does not wait
    assert time.monotonic() - began < 2
    assert task_queue.queue_size() == 1  # the waiting handed over to the next cluster


def test_a_lease_another_host_stopped_renewing_is_resumed_on_expiry(plans, settings, monkeypatch):
    """A worker on another host claimed the run and went silent (dead host, lost
    network): the waiting pump wakes when the lease expires and resumes the run,
    without the reaper's schedule."""
    import threading

    settings.WORKLOAD_DRIVER = "process"
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 2, "sync": False}
    monkeypatch.setenv(engine.CLUSTER_ENV, "test-host:2")
    tenant = new_tenant("orphaned")
    run = run_of(tenant)
    ttl = 2.0
    lease = ledger.claim(run.pk, "elsewhere:4242:abcdef", ttl)
    ledger.run_started(lease, run, then_start=run.steps.get(position=1))
    claimed_at = time.monotonic()

    def pump():
        from django.db import connection

        try:
            engine.pump()
        finally:
            connection.close()

    pumping = threading.Thread(target=pump)
    pumping.start()
    try:
        wait_for(lambda: run_of(tenant).fence > lease.fence, timeout=ttl + 5, message="a resume")
        resumed_after = time.monotonic() - claimed_at
        print(f"\nresumed {resumed_after:.2f}s after the silent worker's claim (lease {ttl:g}s)")
        assert resumed_after < ttl + 2
        wait_for(lambda: run_of(tenant).status == "succeeded", timeout=30, message="the run")
        assert run_of(tenant).resumes == 1
        assert step_of(tenant, "validate").attempts == 2  # the silent worker's, then this one's
    finally:
        engine.announce_stop()
        pumping.join(10)
    actions.decommission_tenant(tenant)
    drive(tenant)


def _waiter_lock_held() -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
            [engine.WAITER_LOCK & 0xFFFFFFFF],
        )
        return cursor.fetchone()[0] > 0


def test_only_one_pump_waits(plans, faults_enabled):
    """A second pump finds the waiter's lock taken and returns at once."""
    tenant = new_tenant(faults=["validate:hang:30"])
    engine.advance(run_of(tenant).pk)
    waiter = engine.Waiter()
    try:
        assert waiter.try_hold()
        began = time.monotonic()
        assert engine.pump() == engine.NOT_CLAIMED
        assert time.monotonic() - began < 2
    finally:
        waiter.close()


def test_commands_print_no_queue_log_lines(plans):
    done = subprocess.run(
        [sys.executable, "manage.py", "provision_tenant", "quiet", "--org", "demo",
         "--plan", "free", "--admin-email", "a@example.com"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "provisioning quiet-demo started; follow it with tenant_status\n"
    assert done.stderr == ""  # was "HH:MM:SS [Q] INFO Enqueued [console-...] 1"


# ------------------------------------------------------------ real qclusters


def park_time(tenant, step_id, timeout=60):
    """Wait until the tenant's run is parked in ``step_id``; return its wake_at."""

    def parked():
        run = run_of(tenant)
        step = StepRun.objects.get(run=run, step_id=step_id)
        return run.wake_at if run.is_parked and step.status == "running" else None

    return wait_for(parked, timeout=timeout, poll=0.02, message=f"{tenant.slug} to park")


def decommission(*tenants):
    """What a test made goes (the cluster runs the decommission)."""
    for tenant in tenants:
        settled(tenant)
        if tenant.state in ("active", "failed"):
            actions.decommission_tenant(tenant)
    for tenant in tenants:
        settled(tenant)


def settled(tenant, timeout=60):
    def done():
        # The run first, then the tenant: a run that ended before this read
        # is fully reflected in the tenant read after it.
        if run_of(tenant).is_live:
            return False
        tenant.refresh_from_db()
        return True

    wait_for(done, timeout=timeout, poll=0.02, message=f"{tenant.slug} to settle")
    return tenant


@pytest.mark.cluster
@pytest.mark.broker
def test_six_tenants_in_a_90s_wait_leave_room_for_a_seventh(plans, faults_enabled, cluster_factory):
    require_docker()
    cluster = cluster_factory(Q_WORKERS=2, WORKLOAD_DRIVER="docker")
    waiting = [new_tenant(f"slow{i}", faults=["wait_ready:hang:90"]) for i in range(6)]
    for tenant in waiting:
        park_time(tenant, "wait_ready", timeout=90)

    began = time.monotonic()
    seventh = new_tenant("seventh")
    wait_for(
        lambda: seventh.refresh_from_db() or seventh.state in ("active", "failed"),
        timeout=30,
        poll=0.02,
        message="the seventh tenant to settle",
    )
    took = time.monotonic() - began
    in_db = (seventh.activated_at - seventh.created_at).total_seconds()
    print(f"\nseventh tenant active {took:.2f}s after submit (database: {in_db:.2f}s)")
    assert seventh.state == "active", cluster.log_path.read_text()[-3000:]
    assert took < 6
    assert all(run_of(t).is_parked for t in waiting)  # still waiting, holding no worker
    decommission(seventh)

    # Cancel of a parked run: it takes effect (the run compensates) within 1 s.
    effects, settles = [], []
    for tenant in waiting:
        requested = time.monotonic()
        actions.request_cancel(tenant, reason="test")
        wait_for(
            lambda t=tenant: run_of(t).status != "running",
            timeout=10,
            poll=0.01,
            message="the cancel to take effect",
        )
        effects.append(time.monotonic() - requested)
        settled(tenant, timeout=30)
        settles.append(time.monotonic() - requested)
        assert tenant.state == "failed" and run_of(tenant).cancelled
        assert get_driver().list_replicas(tenant.key) == []
    print(
        f"cancel of a parked run in wait_ready: compensating after "
        f"max {max(effects) * 1000:.0f} ms, settled (containers removed) after "
        f"median {statistics.median(settles):.2f}s, max {max(settles):.2f}s"
    )
    assert max(effects) < 1


@pytest.mark.cluster
@pytest.mark.broker
def test_a_parked_run_continues_close_to_its_due_time(plans, faults_enabled, cluster_factory):
    """Five runs parked in validate, due one after another; each is claimed when due.

    Two figures: each claim's lateness (the database's clock at the claim
    minus wake_at, which the engine logs at DEBUG), and the time until
    validate's result is recorded (the claim plus the step's own work and
    writes, which the engine's per-step overhead decides).
    """
    cluster = cluster_factory(Q_WORKERS=2, WORKLOAD_DRIVER="process", LOG_LEVEL="DEBUG")
    tenants = [new_tenant(f"due{i}", faults=[f"validate:hang:{2 + i}"]) for i in range(5)]
    wakes = {t.pk: park_time(t, "validate") for t in tenants}
    recorded = []
    for tenant in tenants:
        done = wait_for(
            lambda t=tenant: AuditEvent.objects.filter(
                tenant=t, type="tenant.provisioning.step_completed", details__step="validate"
            ).first(),
            timeout=30,
            message="validate to complete",
        )
        recorded.append((done.created_at - wakes[tenant.pk]).total_seconds())
    decommission(*tenants)
    runs = {run_of(t).pk for t in tenants} | {t.runs.get(kind="provision").pk for t in tenants}
    # Every claim of a parked run: the hangs' ends, and the readiness and
    # verification checks after them.
    late = [
        float(found[2])
        for found in re.finditer(
            r"run (\d+): claimed (\d+) ms after it was due", cluster.log_path.read_text()
        )
        if int(found[1]) in runs
    ]
    print(
        f"\n{len(late)} claims of parked runs: median {statistics.median(late):.0f} ms, "
        f"max {max(late):.0f} ms after due; validate's result recorded "
        f"{', '.join(f'{x * 1000:.0f}' for x in recorded)} ms after its due time"
    )
    assert len(late) >= len(tenants)
    # Every claim comes after its due time and near it. The 100 ms target is a
    # benchmark figure (bench/engine.py, a quiet machine): here, under CI's two
    # test processes on two cores, claims were seen up to 1.5 s late, so the
    # bound only catches a run left to the reaper (3 s and more).
    assert all(0 <= x < 2500 for x in late), (late, cluster.log_path.read_text()[-6000:])
    assert min(recorded) >= 0 and max(recorded) < 3, recorded


@pytest.mark.cluster
@pytest.mark.broker
def test_a_cancel_of_a_parked_run_settles_within_a_second(plans, faults_enabled, cluster_factory):
    cluster_factory(WORKLOAD_DRIVER="process")
    tenant = new_tenant("cancelme", faults=["allocate_network:hang:60"])
    park_time(tenant, "allocate_network")
    requested = timezone.now()
    actions.request_cancel(tenant)
    settled(tenant, timeout=10)
    run = run_of(tenant)
    undone = AuditEvent.objects.filter(run=run, type="tenant.provisioning.compensated")
    # In effect once the parked step is undone; settled once every undo is done.
    effect = (undone.order_by("seq").first().created_at - requested).total_seconds()
    took = (run.finished_at - requested).total_seconds()
    print(
        f"\ncancel of a run parked in allocate_network: its step undone after "
        f"{effect * 1000:.0f} ms, settled in {took * 1000:.0f} ms"
    )
    assert run.cancelled and tenant.state == "failed"
    assert list(undone.order_by("seq").values_list("details__step", flat=True)) == [
        "allocate_network",
        "allocate_identity",
        "allocate_storage",
        "validate",
    ]
    assert effect < 1
    assert took < 3  # four undos after it, on a machine CI's two test processes share


@pytest.mark.cluster
@pytest.mark.broker
def test_a_killed_cluster_loses_no_parked_run(plans, faults_enabled, cluster_factory):
    """SIGKILL every process of the cluster while runs are in wait_ready; a new one
    finishes them within 5 s of starting (issue 8's acceptance), running nothing twice."""
    require_docker()
    first = cluster_factory("first", WORKLOAD_DRIVER="docker")
    tenants = [new_tenant(f"kept{i}", faults=["wait_ready:hang:2"]) for i in range(2)]
    wakes = [park_time(t, "wait_ready") for t in tenants]
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    time.sleep(2.5)  # the waits are over while no cluster runs
    cluster_factory("second", WORKLOAD_DRIVER="docker")
    up = time.monotonic()
    for tenant in tenants:
        settled(tenant, timeout=60)
        took = time.monotonic() - up
        print(f"\n{tenant.slug}: active {took:.2f}s after the new cluster started")
        assert took < 5
        assert tenant.state == "active"
        assert step_of(tenant, "deploy_workloads").attempts == 1
        assert step_of(tenant, "wait_ready").attempts == 1
        assert sorted(started(tenant)) == sorted(STEP_IDS)  # nothing ran twice
        assert len(get_driver().list_replicas(tenant.key)) == 1
    after = [
        (step_of(t, "wait_ready").finished_at - wake).total_seconds()
        for t, wake in zip(tenants, wakes, strict=True)
    ]
    print(f"\nafter the kill, wait_ready finished {', '.join(f'{x:.2f}' for x in after)}s late")
    decommission(*tenants)


@pytest.mark.cluster
@pytest.mark.broker
def test_the_pump_flags_a_parked_step_that_stalls(plans, faults_enabled, cluster_factory):
    cluster_factory(
        WORKLOAD_DRIVER="process",
        PROVISIONING_HEARTBEAT_SECONDS="0.3",
        PROVISIONING_STALL_FACTOR="0.01",
        PROVISIONING_STALL_WAIT_FLOOR_SECONDS="1.5",
    )
    tenant = new_tenant("stuck", faults=["wait_ready:hang:5"])
    park_time(tenant, "wait_ready")
    event = wait_for(
        lambda: AuditEvent.objects.filter(tenant=tenant, type=stall.EVENT).first(),
        timeout=20,
        message="the stalled event",
    )
    step = step_of(tenant, "wait_ready")
    flagged_after = (event.created_at - step.started_at).total_seconds()
    assert run_of(tenant).is_parked  # flagged while no worker held it
    assert 1.5 < flagged_after <= 1.5 + 0.3 + 1.0, flagged_after
    settled(tenant, timeout=30)
    assert tenant.state == "active"
    assert AuditEvent.objects.filter(tenant=tenant, type=stall.EVENT).count() == 1
    decommission(tenant)


@pytest.mark.cluster
@pytest.mark.broker
def test_provision_wait_shows_the_wait_and_no_queue_lines(plans, faults_enabled, cluster_factory):
    cluster_factory(WORKLOAD_DRIVER="process")
    done = subprocess.run(
        [sys.executable, "manage.py", "provision_tenant", "patient", "--org", "demo",
         "--plan", "free", "--admin-email", "a@example.com", "--wait", "--json",
         "--fault", "validate:hang:2"],
        cwd=ROOT, env=subprocess_env(WORKLOAD_DRIVER="process"), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "active"
    assert (
        "step 1/9 Validate request: running (injected hang of 2s); "
        "waiting: injected hang at validate; next check at "
    ) in done.stderr
    assert "[Q]" not in done.stdout + done.stderr and "Enqueued" not in done.stderr
    decommission(Tenant.objects.get(slug="patient"))
