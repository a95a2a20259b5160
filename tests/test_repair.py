"""The repair loop and `manage.py repair_tenant`, on real local-process replicas.

Docker's part (a removed container, an engine restart) is in
tests/test_engine_restart.py; here the same code runs on the process driver,
which needs no engine: a replica's process is killed, removed or frozen for real.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from provisioning import actions, diagnostics, reconcile, repair
from provisioning.drivers import driver_for, get_driver
from provisioning.drivers.process_driver import ProcessDriver
from provisioning.models import AuditEvent, Route, WorkloadHealth
from provisioning.status import tenant_status
from provisioning.steps.storage import drop_schema
from tenants.models import Tenant
from tests.browser_support import served_console
from tests.conftest import drive, new_tenant, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def active(settings, plans):
    """An active `pro` tenant (2 replicas) on the process driver."""
    settings.WORKLOAD_DRIVER = "process"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    tenant = new_tenant("mend", plan="pro")
    assert drive(tenant) == "succeeded"
    tenant.refresh_from_db()
    assert tenant.state == "active" and tenant.workload_driver == "process"
    yield tenant
    driver = get_driver("process")
    driver.remove_replicas(tenant.key)
    driver.remove_network(tenant.key)
    drop_schema(tenant.schema_name)


def repaired_events(tenant):
    return AuditEvent.objects.filter(tenant=tenant, type="tenant.workload.repaired").order_by("seq")


def backends(tenant) -> list[str]:
    return Route.objects.get(tenant=tenant).backends


def replica_pid(tenant, index: int) -> int:
    return int(
        next(r.ref for r in driver_for(tenant).list_replicas(tenant.key) if r.index == index)
    )


def kill(tenant, index: int, sig=signal.SIGKILL) -> int:
    """Signal replica ``index``'s process; after SIGKILL, wait until it is seen gone."""
    pid = replica_pid(tenant, index)
    os.killpg(pid, sig)
    if sig == signal.SIGKILL:
        wait_for(
            lambda: all(
                r.state != "running"
                for r in driver_for(tenant).list_replicas(tenant.key)
                if r.index == index
            ),
            timeout=5,
            message=f"replica {index} to die",
        )
    return pid


def run_command(*args) -> str:
    out = io.StringIO()
    call_command("repair_tenant", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_a_healthy_tenant_needs_nothing_and_gets_no_event(active):
    outcome = repair.repair_tenant(active)
    assert (outcome.healthy, outcome.expected, outcome.repairs) == (2, 2, [])
    assert not repaired_events(active).exists()
    health = WorkloadHealth.objects.get(tenant=active)
    assert not health.degraded and [r["state"] for r in health.replicas] == ["running"] * 2
    assert "2/2 replicas healthy; nothing to repair" in run_command(active.slug)


def test_a_dead_replica_is_restarted_and_the_route_follows_its_new_port(active, settings, tmp_path):
    settings.ROUTES_FILE = str(tmp_path / "nginx-tenants.conf")
    before = backends(active)
    kill(active, 2)

    outcome = repair.repair_tenant(active)

    # One repair, one event: the route it moved is part of it.
    assert [(r.action, r.target) for r in outcome.repairs] == [
        ("restarted", f"tpc-{active.key}-r2")
    ]
    (restarted,) = repaired_events(active)
    assert restarted.details["why"].startswith("replica 2 of 2 was exited")
    assert restarted.details["seconds"] > 0 and restarted.details["source"] == "schedule"
    assert restarted.actor == "system"
    now = backends(active)
    assert restarted.details["route"] == now
    assert now[0] == before[0] and now[1] != before[1]
    # The nginx route table was rewritten with it, once the change committed.
    table = (tmp_path / "nginx-tenants.conf").read_text()
    assert f"server {now[1]} " in table and f"server {before[1]} " not in table
    assert [r.port for r in driver_for(active).list_replicas(active.key)][1] == int(
        now[1].split(":")[1]
    )
    health = WorkloadHealth.objects.get(tenant=active)
    assert (health.healthy, health.expected, health.degraded_since) == (2, 2, None)
    # tenant_status --json and the diagnostics bundle say the same.
    work = tenant_status(active)["workloads"]
    assert (work["driver"], work["healthy"], work["expected"], work["degraded"]) == (
        "process",
        2,
        2,
        False,
    )
    text = diagnostics.as_text(diagnostics.bundle(active))
    assert "Workloads (driver process):" in text and f"tpc-{active.key}-r2 restarted" in text


def test_a_missing_replica_is_recreated(active):
    driver_for(active).remove_replica(active.key, 1)
    outcome = repair.repair_tenant(active, reason="checking", source="command")
    assert [r.action for r in outcome.repairs] == ["recreated"]
    (event,) = repaired_events(active)
    assert event.details["what"] == f"replica tpc-{active.key}-r1 recreated"
    assert event.details["why"].startswith("replica 1 of 2 was missing; answered after")
    assert (event.details["reason"], event.details["source"]) == ("checking", "command")
    assert len(driver_for(active).list_replicas(active.key)) == 2


def test_a_replica_failing_its_health_check_is_replaced_on_the_third_pass(active, monkeypatch):
    monkeypatch.setattr(repair, "PROBE_TIMEOUT", 0.3)
    frozen = replica_pid(active, 1)
    os.killpg(frozen, signal.SIGSTOP)  # running, but answers nothing
    try:
        for misses in (1, 2):
            outcome = repair.repair_tenant(active)
            assert outcome.repairs == [] and outcome.healthy == 1
            health = WorkloadHealth.objects.get(tenant=active)
            assert health.degraded and health.degraded_since is not None
            assert health.replicas[0]["failures"] == misses
            assert health.replicas[0]["answer"] == "timed out"
        outcome = repair.repair_tenant(active)
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone when replaced
            os.killpg(frozen, signal.SIGCONT)
    assert [r.action for r in outcome.repairs] == ["replaced"]
    assert "failed its health check 3 times in a row (timed out)" in outcome.repairs[0].why
    assert replica_pid(active, 1) != frozen
    assert outcome.healthy == 2 and not WorkloadHealth.objects.get(tenant=active).degraded


def test_the_command_prints_json_and_refuses_a_tenant_that_is_not_active(active, plans):
    kill(active, 1)
    data = json.loads(run_command(active.slug, "--json"))
    assert (data["tenant"], data["healthy"], data["expected"]) == ("mend", 2, 2)
    assert [r["action"] for r in data["repairs"]] == ["restarted"]

    provisioning = new_tenant("busy")
    with pytest.raises(CommandError, match="busy is provisioning; only active tenants"):
        run_command("busy")
    assert not WorkloadHealth.objects.filter(tenant=provisioning).exists()
    with pytest.raises(CommandError, match="not a valid slug"):
        run_command("Not A Slug")


def test_the_loop_repairs_every_active_tenant_and_leaves_runs_alone(active, plans):
    busy = new_tenant("busy")  # provisioning, its run queued: its steps own the workloads
    kill(active, 2)
    assert repair.repair_all() == "1 tenant(s) checked, 1 repair(s)"
    assert not WorkloadHealth.objects.filter(tenant=busy).exists()
    assert repair.repair_all() == "1 tenant(s) checked, 0 repair(s)"


def test_a_route_switched_off_or_gone_is_put_back(active):
    Route.objects.filter(tenant=active).update(enabled=False)
    assert [r.action for r in repair.repair_tenant(active).repairs] == ["switched on"]
    Route.objects.filter(tenant=active).delete()
    assert [r.action for r in repair.repair_tenant(active).repairs] == ["recreated"]
    route = Route.objects.get(tenant=active)
    assert route.enabled and len(route.backends) == 2


def test_reconcile_suggests_repair_and_never_decommissioning_for_workloads(active):
    kill(active, 1)
    report = reconcile.find_drift()
    (finding,) = [f for f in report.findings if f.tenant_id == active.pk]
    assert finding.kind == "container" and "replica 1 of 2 is exited" in finding.why
    assert f"repair_tenant {active.slug}" in finding.suggestion
    assert "decommission" not in finding.suggestion


def test_a_tenant_keeps_its_driver_whatever_the_process_would_choose_now(active, settings):
    # The process now prefers Docker, or "auto" finds no engine: the tenant's
    # replicas are still processes, and everything about it goes there.
    settings.WORKLOAD_DRIVER = "docker"
    assert isinstance(driver_for(active), ProcessDriver)
    kill(active, 1)
    assert [r.action for r in repair.repair_tenant(active).repairs][0] == "restarted"
    actions.decommission_tenant(active)
    assert drive(active) == "decommissioned"
    active.refresh_from_db()
    assert active.state == Tenant.State.DECOMMISSIONED
    assert get_driver("process").list_replicas(active.key) == []
    assert get_driver("process").find_network(active.key) is None


def test_auto_decides_for_each_new_tenant_when_it_first_needs_a_driver(
    settings, plans, monkeypatch, tmp_path
):
    settings.WORKLOAD_DRIVER = "auto"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    first = new_tenant("first")
    assert isinstance(driver_for(first), ProcessDriver)
    first.refresh_from_db()
    assert first.workload_driver == "process"
    # The same process, later, with an engine that answers (a fake one here
    # would do as well; the real one is used when present).
    from tests.docker_support import require_docker

    monkeypatch.delenv("DOCKER_HOST")
    require_docker()
    second = new_tenant("second")
    assert driver_for(second).name == "docker"
    assert driver_for(first).name == "process"  # recorded: not chosen again


def test_the_proxy_follows_replicas_that_moved_without_waiting_for_the_loop(
    active, settings, tmp_path
):
    driver = driver_for(active)
    before = backends(active)
    for index in (1, 2):
        kill(active, index)
    # Both come back on new ports, as after an engine restart; the route still
    # names the old ones.
    driver.ensure_replicas(
        active.key,
        image="",
        count=2,
        memory_mb=0,
        pids_limit=0,
        labels={},
        env={"TENANT_SLUG": active.slug, "TENANT_ORG": active.org},
    )
    assert backends(active) == before
    with served_console(settings, tmp_path) as (_, client):
        response = client.get("/", headers={"Host": active.hostname})
    assert response.status_code == 200 and "mend" in response.text
    assert backends(active) == [f"{r.host}:{r.port}" for r in driver.list_replicas(active.key)]
    (event,) = repaired_events(active)
    assert (event.details["action"], event.details["source"]) == ("updated", "proxy")


def test_replicas_past_the_plans_count_are_removed(active):
    driver = driver_for(active)
    driver.ensure_replicas(
        active.key,
        image="",
        count=3,
        memory_mb=0,
        pids_limit=0,
        labels={},
        env={"TENANT_SLUG": active.slug, "TENANT_ORG": active.org},
    )
    outcome = repair.repair_tenant(active)
    assert [(r.action, r.target) for r in outcome.repairs] == [("removed", f"tpc-{active.key}-r3")]
    assert [r.index for r in driver.list_replicas(active.key)] == [1, 2]


def test_a_pass_asks_an_unreachable_engine_once_and_marks_its_tenants_degraded(
    plans, operator, settings, monkeypatch, tmp_path
):
    from provisioning import drivers
    from provisioning.drivers.docker_driver import DockerDriver
    from tests.views_support import activate

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/dockerd-is-down.sock")
    drivers.clear_cache()
    asked = []
    real = DockerDriver.list_replicas
    monkeypatch.setattr(
        DockerDriver, "list_replicas", lambda self, key: asked.append(key) or real(self, key)
    )
    tenants = [new_tenant(slug, plan="pro", user=operator) for slug in ("one", "two", "three")]
    for tenant in tenants:
        activate(tenant)
    Tenant.objects.update(workload_driver="docker")
    try:
        summary = repair.repair_all()
    finally:
        drivers.clear_cache()
    assert summary.startswith(
        "3 tenant(s) checked, 0 repair(s), 3 not repaired (docker_unreachable"
    )
    assert len(asked) == 1
    for tenant in tenants:
        health = WorkloadHealth.objects.get(tenant=tenant)
        assert health.degraded and health.error.startswith("docker_unreachable")
