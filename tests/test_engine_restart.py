"""Workloads ride out a Docker Engine restart and heal themselves (issue 9).

Everything here runs on an engine of the tests' own (tests/engine_support.py),
stopped with SIGTERM and started again with the same command line, never on
the machine's dockerd. The console runs as in production: a real qcluster
and daphne (its tenant proxy) on the test database.

Not marked ``cluster``: the queue's delivery paths are not what these test,
so CI's second pass on the Redis broker leaves them out.
"""

from __future__ import annotations

import importlib
import time

import pytest
from django.apps import apps as django_apps
from django.utils import timezone

from provisioning import actions, drivers, repair
from provisioning.models import AuditEvent, Route
from provisioning.steps.storage import drop_schema
from tenants.models import Tenant
from tests.browser_support import served_console
from tests.conftest import new_tenant, wait_for, wait_for_step
from tests.engine_support import own_engine  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

_migration = importlib.import_module("provisioning.migrations.0011_workload_health")


@pytest.fixture
def engine(own_engine):  # noqa: F811 (the fixture imported above)
    return own_engine


@pytest.fixture
def console(engine, settings, monkeypatch, tmp_path, plans, cluster_factory):
    """Workers and daphne on the tests' own engine; (cluster, http client)."""
    for name, value in engine.env().items():
        monkeypatch.setenv(name, value)  # for the subprocesses
    settings.WORKLOAD_DRIVER = "docker"
    settings.WORKLOAD_PUBLISH_HOST = engine.ns_ip
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    drivers.clear_cache()  # this process's docker client must reach this engine
    cluster = cluster_factory(WORKLOAD_DRIVER="docker", **engine.env())
    with served_console(settings, tmp_path) as (_, client):
        yield cluster, client
    drivers.clear_cache()


def active_pro_tenant(slug: str, cluster) -> Tenant:
    tenant = new_tenant(slug, plan="pro")
    wait_for(
        lambda: tenant.refresh_from_db() or tenant.state in ("active", "failed"),
        timeout=60,
        message=f"{slug} to settle",
    )
    assert tenant.state == "active", cluster.log_path.read_text()[-3000:]
    return tenant


def status(client, tenant) -> int:
    return client.get("/", headers={"Host": tenant.hostname}).status_code


def running(engine, tenant) -> list[str]:
    client = engine.client()
    try:
        containers = client.containers.list(
            filters={"label": f"io.tenant-console.key={tenant.key}"}
        )
        return sorted(c.name for c in containers if c.status == "running")
    finally:
        client.close()


def cleanup(tenant) -> None:
    driver = drivers.get_driver("docker")
    driver.remove_replicas(tenant.key)
    driver.remove_network(tenant.key)
    drop_schema(tenant.schema_name)


def test_an_active_tenant_serves_again_after_an_engine_restart_with_no_command_run(engine, console):
    cluster, client = console
    tenant = active_pro_tenant("phoenix", cluster)
    try:
        before = Route.objects.get(tenant=tenant).backends
        assert status(client, tenant) == 200

        engine.stop()
        assert status(client, tenant) == 502
        engine.start()
        back = time.monotonic()
        wait_for(lambda: status(client, tenant) == 200, timeout=30, poll=0.2, message="200")
        took = time.monotonic() - back
        print(f"\nengine answering -> tenant URL 200: {took:.2f}s")

        assert took < 30
        assert running(engine, tenant) == [f"tpc-{tenant.key}-r1", f"tpc-{tenant.key}-r2"]
        # Each replica came back on its own port, so the route was right all
        # along: no window in which one tenant's port served another's replica.
        now = drivers.get_driver("docker").list_replicas(tenant.key)
        assert [f"{r.host}:{r.port}" for r in now] == before
        assert Route.objects.get(tenant=tenant).backends == before
    finally:
        cleanup(tenant)


def test_a_removed_replica_is_recreated_by_the_loop_while_the_other_one_answers(engine, console):
    cluster, client = console
    tenant = active_pro_tenant("lazarus", cluster)
    try:
        # The loop's schedules as the migration made them, due now (a flushed
        # test database has lost the migration's rows).
        _migration.schedule(django_apps, None)
        Schedule = django_apps.get_model("django_q", "Schedule")
        Schedule.objects.filter(name__in=_migration.SCHEDULES).update(next_run=timezone.now())

        client_ = engine.client()
        client_.containers.get(f"tpc-{tenant.key}-r1").remove(force=True)
        client_.close()
        removed = time.monotonic()
        answers = []

        def recreated():
            answers.append(status(client, tenant))
            return len(running(engine, tenant)) == 2

        wait_for(recreated, timeout=60, poll=0.5, message="the replica to be recreated")
        took = time.monotonic() - removed
        print(f"\nreplica removed -> recreated by the loop: {took:.1f}s; answers {set(answers)}")
        assert set(answers) == {200}
        # Recorded once the new replica answers, a moment after it runs.
        repaired = AuditEvent.objects.filter(tenant=tenant, type="tenant.workload.repaired")
        wait_for(repaired.exists, timeout=30, message="the repair's event")
        (event,) = repaired
        assert event.details["action"] == "recreated"
        assert event.details["target"] == f"tpc-{tenant.key}-r1"
        assert event.details["source"] == "schedule" and event.details["seconds"] > 0
        wait_for(lambda: status(client, tenant) == 200, timeout=5, message="200 after")
        health = tenant.workload_health
        health.refresh_from_db()
        assert (health.healthy, health.expected) == (2, 2)
    finally:
        cleanup(tenant)


# The engine's side: a run that meets an engine outage parks and retries it
# for WORKLOAD_ENGINE_OUTAGE_SECONDS, and an undo does the same (engine.py).


def test_an_engine_restart_during_deploy_workloads_ends_active_with_both_replicas(
    engine, console, faults_enabled, monkeypatch
):
    cluster, client = console
    tenant = new_tenant("rider", plan="pro", faults=["deploy_workloads:hang:4"])
    try:
        wait_for_step(tenant, "deploy_workloads", "running", timeout=60)
        engine.stop()  # while the step waits out its 4 s
        time.sleep(6)  # the step's real work meets a stopped engine
        engine.start()
        back = time.monotonic()
        wait_for(
            lambda: tenant.refresh_from_db() or tenant.state in ("active", "failed"),
            timeout=60,
            message="the tenant to settle",
        )
        took = time.monotonic() - back
        print(f"\nengine answering -> tenant active: {took:.2f}s")
        assert tenant.state == "active", cluster.log_path.read_text()[-3000:]
        assert running(engine, tenant) == [f"tpc-{tenant.key}-r1", f"tpc-{tenant.key}-r2"]
        assert status(client, tenant) == 200
    finally:
        cleanup(tenant)


def test_a_docker_tenant_is_decommissioned_by_a_worker_started_while_the_engine_was_down(
    engine, console, cluster_factory
):
    cluster, _ = console
    tenant = active_pro_tenant("leaver", cluster)
    wait_for(lambda: not repair.not_repairable(tenant), timeout=30, message="the run's end")
    assert tenant.workload_driver == "docker"
    cluster.stop()
    engine.stop()
    # WORKLOAD_DRIVER=auto in a worker that finds no engine would choose the
    # process driver; the tenant's own driver is what decommission uses.
    late = cluster_factory("late", WORKLOAD_DRIVER="auto", **engine.env())
    actions.decommission_tenant(tenant, reason="test")
    time.sleep(3)  # it meets the stopped engine and waits
    tenant.refresh_from_db()
    assert tenant.state == "decommissioning", late.log_path.read_text()[-3000:]
    engine.start()
    back = time.monotonic()
    wait_for(
        lambda: tenant.refresh_from_db() or tenant.state in ("decommissioned", "failed"),
        timeout=60,
        message="the decommission to settle",
    )
    print(f"\nengine answering -> decommissioned: {time.monotonic() - back:.2f}s")
    assert tenant.state == "decommissioned", late.log_path.read_text()[-3000:]
    client = engine.client()
    try:
        assert (
            client.containers.list(
                all=True, filters={"label": f"io.tenant-console.key={tenant.key}"}
            )
            == []
        )
        assert [n for n in client.networks.list() if n.name == f"tpc-{tenant.key}"] == []
    finally:
        client.close()
