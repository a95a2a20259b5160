"""Reconciliation against the real Docker Engine and PostgreSQL."""

from __future__ import annotations

import importlib
import io
import json

import pytest
from django.apps import apps as django_apps
from django.core.management import call_command
from django.db import connection
from psycopg import sql

from console import fragments
from provisioning import actions, reconcile, tasks
from provisioning.drivers import get_driver
from provisioning.drivers.base import LABEL_KEY, LABEL_TENANT, Network, Replica
from provisioning.models import AuditEvent, ReconcileReport, Route
from provisioning.steps.storage import MARKER, drop_schema, schema_exists
from tenants.models import Tenant
from tests.conftest import drive, new_tenant
from tests.docker_support import require_docker

pytestmark = pytest.mark.django_db(transaction=True)

GHOST_ID = 999999
GHOST_SCHEMA = f"t{GHOST_ID}_ghost"


def ghost_key(settings) -> str:
    return f"{settings.RESOURCE_NAMESPACE}t{GHOST_ID}-ghost"


def create_ghost_schema():
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(GHOST_SCHEMA)))
        cursor.execute(
            sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                sql.Identifier(GHOST_SCHEMA), sql.Literal(f"{MARKER}{GHOST_ID}")
            )
        )


def run_command(*args) -> str:
    out = io.StringIO()
    call_command("reconcile", *args, stdout=out, stderr=io.StringIO())
    print(f"$ manage.py reconcile {' '.join(args)}\n{out.getvalue()}")  # shown with -s
    return out.getvalue()


@pytest.fixture
def docker(settings, plans):
    require_docker()
    settings.WORKLOAD_DRIVER = "docker"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    driver = get_driver()
    yield driver
    driver.remove_replicas(ghost_key(settings))
    driver.remove_network(ghost_key(settings))
    drop_schema(GHOST_SCHEMA)


@pytest.fixture
def active_tenant(docker):
    tenant = new_tenant()
    assert drive(tenant) == "succeeded"
    tenant.refresh_from_db()
    assert tenant.state == "active"
    yield tenant
    docker.remove_replicas(tenant.key)
    docker.remove_network(tenant.key)
    drop_schema(tenant.schema_name)


def test_reconcile_reports_fixes_and_then_reports_nothing_new(settings, docker, active_tenant):
    tenant, key = active_tenant, ghost_key(settings)
    # A clean start: whatever earlier tests left behind goes first.
    reconcile.check(fix_orphans=True)
    report = reconcile.find_drift()
    assert [f.id for f in report.findings] == []
    # Count only this test's events from here on.
    since = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    events = AuditEvent.objects.filter(seq__gt=since)

    # Kill the tenant's container by hand; make an orphan container and schema.
    mine = f"tpc-{tenant.key}-r1"
    docker.client.containers.get(mine).remove(force=True)
    docker.ensure_replicas(
        key,
        image=settings.WORKLOAD_IMAGE,
        count=1,
        memory_mb=32,
        pids_limit=16,
        labels={LABEL_TENANT: str(GHOST_ID)},
        env={},
    )
    create_ghost_schema()
    ghost = f"tpc-{key}-r1"

    report = reconcile.find_drift()
    by_id = {f.id: f for f in report.findings}
    assert set(by_id) == {
        f"orphan:container:{ghost}",
        f"orphan:schema:{GHOST_SCHEMA}",
        f"missing:container:{mine}",
    }
    assert by_id[f"orphan:container:{ghost}"].why == "no such tenant"
    assert by_id[f"orphan:schema:{GHOST_SCHEMA}"].tenant_id == GHOST_ID
    missing = by_id[f"missing:container:{mine}"]
    assert missing.tenant_id == tenant.pk and "replica 1 of 1 is gone" in missing.why
    assert f"repair_tenant {tenant.slug}" in missing.suggestion
    assert "decommission" not in missing.suggestion

    # The command lists all three, as new, and changes nothing.
    text = run_command()
    for name in (ghost, GHOST_SCHEMA, mine):
        assert any(name in line and line.endswith("[new]") for line in text.splitlines()), text
    assert "3 problem(s), 3 new" in text and "manage.py reconcile --fix" in text
    assert docker.list_replicas(key) and schema_exists(GHOST_SCHEMA)
    assert events.filter(type="reconcile.drift_found").count() == 1

    # --fix removes the orphans, one event each, and still reports the missing container.
    text = run_command("--fix")
    assert f"removed  container  {ghost}" in text and f"removed  schema     {GHOST_SCHEMA}" in text
    assert docker.list_replicas(key) == [] and not schema_exists(GHOST_SCHEMA)
    assert mine in text and "1 problem(s), nothing new" in text
    removed = events.filter(type="reconcile.orphan_removed").order_by("seq")
    assert [(e.details["kind"], e.details["name"], e.details["tenant_id"]) for e in removed] == [
        ("container", ghost, GHOST_ID),
        ("schema", GHOST_SCHEMA, GHOST_ID),
    ]
    assert all(e.tenant is None and e.actor == "system" for e in removed)
    # The tenant's own resources were left alone.
    assert schema_exists(tenant.schema_name) and docker.find_network(tenant.key)
    assert Route.objects.filter(tenant=tenant, enabled=True).exists()

    # A second run (and a second --fix) reports nothing new and removes nothing.
    text = run_command("--fix")
    assert "removed" not in text and "[new]" not in text and "nothing new" in text
    data = json.loads(run_command("--json"))
    assert (data["problems"], data["new"], data["removed"]) == (1, 0, [])
    assert data["findings"][0]["id"] == f"missing:container:{mine}"
    assert data["findings"][0]["new"] is False
    assert events.filter(type="reconcile.orphan_removed").count() == 2
    assert events.filter(type="reconcile.drift_found").count() == 1


def test_the_schedule_stores_findings_and_the_list_page_shows_them(
    settings, docker, active_tenant, client, operator
):
    tenant = active_tenant
    reconcile.check(fix_orphans=True)  # start clean
    events_before = AuditEvent.objects.filter(type="reconcile.drift_found").count()
    assert 'id="drift-banner" hx-swap-oob="morph"></div>' in fragments.list_fragments(role="viewer")

    docker.client.containers.get(f"tpc-{tenant.key}-r1").stop(timeout=0)
    create_ghost_schema()
    assert tasks.reconcile_report() == "2 problem(s), 2 new"
    stored = ReconcileReport.objects.get(pk=1)
    assert {f["id"] for f in stored.findings} == {
        f"orphan:schema:{GHOST_SCHEMA}",
        f"missing:container:tpc-{tenant.key}-r1",
    }
    assert any("is exited" in f["why"] for f in stored.findings)
    event = AuditEvent.objects.filter(type="reconcile.drift_found").latest("seq")
    assert event.details["problems"] == 2 and len(event.details["new"]) == 2
    # Nothing new on the next run: no second event.
    assert tasks.reconcile_report() == "2 problem(s), 0 new"
    assert AuditEvent.objects.filter(type="reconcile.drift_found").count() == events_before + 1

    # The list page and its live push both carry the banner.
    pushed = fragments.list_fragments(role="viewer")
    assert 'id="drift-banner" class="banner banner--warn" hx-swap-oob="morph"' in pushed
    assert "Reconcile found 2 problems" in pushed and "manage.py reconcile --fix" in pushed
    client.force_login(operator)
    page = client.get("/").content.decode()
    assert "Reconcile found 2 problems" in page and GHOST_SCHEMA in page

    # The schedule exists (the migration's function, run again: the flush emptied it).
    migration = importlib.import_module("provisioning.migrations.0006_reconcile")
    migration.schedule(django_apps, None)
    schedule = django_apps.get_model("django_q", "Schedule").objects.get(name=migration.NAME)
    assert schedule.func == "provisioning.tasks.reconcile_report"


class FakeDriver:
    """list_managed() only; what an engine shared with others might answer."""

    name = "docker"

    def __init__(self, replicas=(), networks=()):
        self.replicas, self.networks = list(replicas), list(networks)

    def list_managed(self):
        return {"replicas": self.replicas, "networks": self.networks}

    def list_replicas(self, key):
        return []

    def find_network(self, key):
        return None


def replica(name, labels):
    return Replica(
        name=name, index=1, host="127.0.0.1", port=1, state="running", ref="x", labels=labels
    )


def test_only_this_installations_names_are_considered(settings, plans):
    settings.RESOURCE_NAMESPACE = ""
    # Another installation's namespace, a test run's, and a name whose labels disagree.
    others = [
        replica("tpc-test123-t5-acme-r1", {LABEL_KEY: "test123-t5-acme"}),
        replica("tpc-t1-t5-acme-r1", {LABEL_KEY: "t1-t5-acme", LABEL_TENANT: "5"}),
        replica("tpc-t7-acme-r1", {LABEL_KEY: "t7-other"}),
        replica("not-ours-r1", {}),
    ]
    ours = replica("tpc-t8-acme-r1", {LABEL_KEY: "t8-acme", LABEL_TENANT: "8"})
    networks = [
        Network(name="tpc-foo-t9-x", ref="n", labels={}),
        Network("tpc-t9-x", "n", {LABEL_KEY: "t9-x"}),
        Network("tpc-t10-y", "n", {}),
    ]
    report = reconcile.find_drift(FakeDriver([*others, ours], networks))
    assert sorted(f.id for f in report.findings if f.kind != "schema") == [
        "orphan:container:tpc-t8-acme-r1",
        "orphan:network:tpc-t9-x",
    ]
    settings.RESOURCE_NAMESPACE = "prod-"
    assert reconcile.parse_key("tpc-prod-t8-acme-r2", replica=True) == ("prod-t8-acme", 8, "acme")
    assert reconcile.parse_key("tpc-t8-acme-r2", replica=True) is None
    assert reconcile.parse_key("tpc-prod-staging-t8-acme", replica=False) is None


def test_routes_and_resources_of_dead_tenants_are_orphans_but_live_ones_are_not(plans):
    failed, gone, live = new_tenant("failed1"), new_tenant("gone1"), new_tenant("live1")
    for tenant in (failed, gone, live):
        Route.objects.create(tenant=tenant, hostname=tenant.hostname)
    run = actions.latest_run(failed)
    run.steps.filter(step_id="allocate_network").update(status="compensated")
    run.steps.filter(step_id="deploy_workloads").update(status="succeeded")
    run.status = "failed"
    run.save()
    Tenant.objects.filter(pk=failed.pk).update(state="failed")
    actions.latest_run(gone).__class__.objects.filter(tenant=gone).update(status="failed")
    Tenant.objects.filter(pk=gone.pk).update(state="decommissioned")
    failed.refresh_from_db()
    # live1 is provisioning with its run queued: never judged.
    report = reconcile.find_drift(FakeDriver())
    assert {(f.id, f.why) for f in report.findings if f.kind == "route"} == {
        (
            f"orphan:route:{failed.hostname}",
            "tenant failed and its allocate_network step is compensated",
        ),
        (f"orphan:route:{gone.hostname}", "tenant is decommissioned"),
    }
    # The failed tenant's containers are still recorded (deploy_workloads succeeded).
    assert reconcile.orphan_reason(failed, "container") == ""
    report.findings = [f for f in report.findings if f.kind == "route"]
    removed = reconcile.fix(report, driver=FakeDriver())
    assert len(removed) == 2 and list(Route.objects.values_list("tenant_id", flat=True)) == [
        live.pk
    ]
    assert reconcile.fix(report, driver=FakeDriver()) == []
