"""In Chromium: a tenant on the swarm shows the node of each replica, and a task that
Swarm replaces shows up live on its page (the chip's node, the rescheduling event).

On the tests' own two-node swarm (tests/swarm_support.py), with the console's
workers (whose follower keeps the route on the current tasks) and daphne.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from provisioning import drivers
from provisioning.steps.storage import drop_schema
from tests.browser_support import shot
from tests.conftest import new_tenant, wait_for
from tests.swarm_support import swarm_lab  # noqa: F401 (a fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.swarm,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def on_swarm(swarm_lab, settings, monkeypatch, tmp_path):  # noqa: F811
    """Requested before ``open_page``, so its workers and daphne run tenants on the swarm."""
    for name, value in swarm_lab.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ROUTES_FILE", str(tmp_path / "routes" / "nginx-tenants.conf"))
    settings.WORKLOAD_DRIVER = "swarm"
    settings.WORKLOAD_REGISTRY = swarm_lab.registry
    drivers.clear_cache()
    yield swarm_lab
    drivers.clear_cache()


def test_the_page_names_each_replicas_node_and_follows_a_replaced_task_live(
    on_swarm, operator, open_page
):
    lab = on_swarm
    tenant = new_tenant("atlas", plan="enterprise")
    driver = drivers.get_driver("swarm")
    try:
        wait_for(
            lambda: tenant.refresh_from_db() or tenant.state in ("active", "failed"),
            timeout=60,
            message="the tenant to settle",
        )
        assert tenant.state == "active"
        page = open_page(operator, f"/tenants/{tenant.slug}/")
        header = page.locator("#tenant-header")
        expect(header.locator(".chip-node")).to_have_count(3)
        expect(header).to_contain_text(f"on {lab.manager.hostname}")
        expect(header).to_contain_text(f"on {lab.worker.hostname}")

        victim = next(r for r in driver.list_replicas(tenant.key) if r.node == lab.worker.hostname)
        node = lab.worker.client()
        try:
            node.containers.list(filters={"label": f"com.docker.swarm.task.id={victim.ref}"})[
                0
            ].kill()
        finally:
            node.close()
        # No reload: the follower's event and chips reach the open page by its socket.
        events = page.locator("#tenant-events")
        expect(events).to_contain_text(
            f"Swarm rescheduled {victim.name} {lab.worker.hostname} →", timeout=30_000
        )
        fresh = next(r for r in driver.list_replicas(tenant.key) if r.index == victim.index)
        chip = header.locator(".chip", has_text=victim.name)
        expect(chip).to_contain_text(f"on {fresh.node}")
        expect(chip).to_contain_text("healthy")
        shot(page, "detail-swarm")
    finally:
        driver.remove_replicas(tenant.key)  # (its network goes with the session's swarm)
        drop_schema(tenant.schema_name)
