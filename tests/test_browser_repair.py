"""In Chromium: `docker stop` of a replica shows Degraded live, and healthy again after the repair.

On an engine of the tests' own (tests/engine_support.py), with the console's
workers and daphne on it.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from provisioning import drivers, repair
from provisioning.models import AuditEvent
from provisioning.steps.storage import drop_schema
from tests.conftest import new_tenant, wait_for
from tests.engine_support import own_engine  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.django_db(transaction=True)]

# Records every state of the header's badge the page ever showed, in order.
WATCH_BADGE = """() => {
  window.seenDegraded = false;
  new MutationObserver(() => {
    if (document.querySelector('#tenant-header .badge--degraded')) window.seenDegraded = true;
  }).observe(document.body, {subtree: true, childList: true});
}"""


@pytest.fixture
def engine(own_engine):  # noqa: F811 (the fixture imported above)
    return own_engine


@pytest.fixture
def on_own_engine(engine, settings, monkeypatch):
    """Requested before ``open_page``, so its workers and daphne use the engine too."""
    for name, value in engine.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WORKLOAD_DRIVER", "docker")
    settings.WORKLOAD_DRIVER = "docker"
    settings.WORKLOAD_PUBLISH_HOST = engine.ns_ip
    drivers.clear_cache()
    yield engine
    drivers.clear_cache()


def test_a_stopped_replica_shows_degraded_live_then_healthy_after_the_repair(
    on_own_engine, operator, open_page
):
    engine = on_own_engine
    tenant = new_tenant("wobbly", plan="pro")
    try:
        wait_for(
            lambda: tenant.refresh_from_db() or tenant.state in ("active", "failed"),
            timeout=60,
            message="the tenant to settle",
        )
        assert tenant.state == "active"
        # The run's last step (welcome emails) ends after activation; until then
        # the run owns the workloads and the loop leaves the tenant alone.
        wait_for(lambda: not repair.not_repairable(tenant), timeout=30, message="the run's end")
        assert repair.repair_all() == "1 tenant(s) checked, 0 repair(s)"  # the first look
        page = open_page(operator, f"/tenants/{tenant.slug}/")
        header = page.locator("#tenant-header")
        expect(header).to_contain_text("2 of 2 replicas healthy")
        expect(header.locator(".badge--degraded")).to_have_count(0)
        page.evaluate(WATCH_BADGE)

        client = engine.client()
        client.containers.get(f"tpc-{tenant.key}-r1").stop(timeout=0)
        client.close()
        outcome = repair.repair_all()  # one pass of the loop, as its schedule runs it

        assert outcome == "1 tenant(s) checked, 1 repair(s)"
        page.wait_for_function("window.seenDegraded === true", timeout=10_000)
        expect(header).to_contain_text("2 of 2 replicas healthy")
        expect(header.locator(".badge--degraded")).to_have_count(0)
        expect(header.locator(".chip--ok")).to_have_count(2)
        restarted = AuditEvent.objects.get(
            tenant=tenant, type="tenant.workload.repaired", details__action="restarted"
        )
        assert restarted.details["why"].startswith("replica 1 of 2 was exited")
    finally:
        driver = drivers.get_driver("docker")
        driver.remove_replicas(tenant.key)
        driver.remove_network(tenant.key)
        drop_schema(tenant.schema_name)
