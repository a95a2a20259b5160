"""Tenant traffic at its subdomain: the console's ASGI app (in daphne) proxies
`<slug>-<org>.localhost:<port>` to the tenant's Docker replicas."""

from __future__ import annotations

import re

import pytest

from provisioning import actions
from provisioning.drivers import get_driver
from provisioning.models import Route, StepRun
from provisioning.traffic import export, routing
from tests.browser_support import served_console
from tests.conftest import drive, drive_in_background, new_tenant, wait_for, wait_for_step
from tests.docker_support import require_docker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.docker]


def decommission(tenant):
    actions.decommission_tenant(tenant)
    assert drive(tenant) == "decommissioned"


@pytest.fixture
def served(settings, tmp_path, plans):
    """daphne serving console.asgi on a free port; this process agrees on BASE_DOMAIN."""
    require_docker()
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    with served_console(settings, tmp_path) as server_and_client:
        yield server_and_client


def get(client, host, path="/"):
    return client.get(path, headers={"Host": host})


def replica_of(response) -> str:
    return re.search(r"served by replica (\S+) of", response.text).group(1)


def test_an_enterprise_tenant_is_served_at_its_subdomain_across_replicas(served):
    server, client = served
    tenant = new_tenant("acme", plan="enterprise")
    host = tenant.hostname
    assert host == f"acme-demo.localhost:{server.port}"

    provisioning = get(client, host)
    assert provisioning.status_code == 503
    assert provisioning.headers["retry-after"] == "5"
    assert "being provisioned" in provisioning.text

    try:
        assert drive(tenant) == "succeeded"
        step = StepRun.objects.get(run__tenant=tenant, step_id="mark_active")
        assert step.outputs["verified"] is True and step.outputs["verify_ms"] >= 0
        lines = list(step.log_lines.values_list("message", flat=True))
        assert any(f"verified http://{host}/ -> 200, tenant page" in m for m in lines), lines

        # Up to CACHE_SECONDS may pass before the console notices the activation.
        wait_for(lambda: get(client, host).status_code == 200, timeout=5)
        answers = [get(client, host) for _ in range(12)]
        assert {r.status_code for r in answers} == {200}
        assert all("Welcome to tenant acme-demo" in r.text for r in answers)
        assert {replica_of(r) for r in answers} == {"1", "2", "3"}
        # Case-insensitive Host, query strings and HEAD pass through.
        assert get(client, host.upper(), "/?x=1").status_code == 200
        assert client.head("/", headers={"Host": host}).status_code == 200
        assert get(client, host, "/healthz").text == "ok"
        assert get(client, host, "/missing").status_code == 404

        # The routes file lists the enabled route with its three replicas.
        conf = export.routes_path().read_text()
        route = Route.objects.get(tenant=tenant)
        assert f"acme-demo.localhost tenant_{tenant.pk};" in conf
        assert all(f"server {b} " in conf for b in route.backends) and len(route.backends) == 3

        # A replica stopped by hand: the URL keeps answering from the other two.
        import docker

        engine = docker.from_env()
        victim = sorted(get_driver().list_replicas(tenant.key), key=lambda r: r.index)[0]
        engine.containers.get(victim.ref).stop(timeout=0)
        engine.close()
        after = [get(client, host) for _ in range(12)]
        assert {r.status_code for r in after} == {200}
        assert {replica_of(r) for r in after} == {"2", "3"}
    finally:
        decommission(tenant)

    wait_for(lambda: get(client, host).status_code == 404, timeout=5)
    assert "No tenant is served" in get(client, host).text
    assert f"tenant_{tenant.pk}" not in export.routes_path().read_text()


def test_a_tenant_hanging_in_wait_ready_is_503_even_with_replicas_up(served, faults_enabled):
    """Replicas running and a route with backends are not enough: 503 until active."""
    server, client = served
    tenant = new_tenant("hangs", faults=["wait_ready:hang:60"])
    worker, outcome = drive_in_background(tenant)
    try:
        wait_for_step(tenant, "wait_ready", timeout=60)
        assert Route.objects.get(tenant=tenant).backends
        answer = get(client, tenant.hostname)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    finally:
        actions.request_cancel(tenant, reason="test over")
        worker.join(timeout=60)
    assert outcome["result"] == "cancelled"
    routing.forget()
    wait_for(lambda: get(client, tenant.hostname).status_code == 404, timeout=5)  # failed


def test_unknown_and_odd_hosts_never_get_a_500(served):
    server, client = served
    port = server.port
    assert get(client, f"nobody-demo.localhost:{port}").status_code == 404
    assert get(client, f"a.b.localhost:{port}").status_code == 404
    assert get(client, f"-x-.localhost:{port}").status_code == 404
    for host in ["[::1]", f"[::1]:{port}", "evil.example.com", "x" * 300, "a b", "localhost:99999"]:
        status = get(client, host).status_code
        assert status in (400, 404) or status < 400, (host, status)
    # The console itself still answers at its own host.
    assert client.get("/healthz", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_a_failed_tenant_is_404_and_provisioning_is_503(served, faults_enabled):
    server, client = served
    tenant = new_tenant("broken", faults=["allocate_storage:permanent"])
    assert get(client, tenant.hostname).status_code == 503
    assert drive(tenant) == "failed"
    routing.forget()
    wait_for(lambda: get(client, tenant.hostname).status_code == 404, timeout=5)


def test_verification_through_a_real_url_uses_the_console(served, settings):
    """TRAFFIC_VERIFY_URL: mark_active checks through daphne, as an edge would."""
    server, client = served
    settings.TRAFFIC_VERIFY_URL = f"http://127.0.0.1:{server.port}"
    tenant = new_tenant("edge")
    try:
        assert drive(tenant) == "succeeded"
        step = StepRun.objects.get(run__tenant=tenant, step_id="mark_active")
        lines = list(step.log_lines.values_list("message", flat=True))
        expected = f"verified http://{tenant.hostname}/ via {settings.TRAFFIC_VERIFY_URL} -> 200"
        assert any(expected in m for m in lines), lines
    finally:
        decommission(tenant)
