"""The production edge for real: Debian's nginx running deploy/nginx/tenant-console.conf
in front of daphne and a real qcluster, with the route table the workers write.

- a tenant host answers through nginx straight from its replicas;
- the console's websocket works through nginx;
- after a route change, the reload the route-table writer runs
  (ROUTES_RELOAD_COMMAND) makes nginx use the new table.
"""

from __future__ import annotations

import time

import httpx
import pytest
from django.test import Client
from websockets.sync.client import connect

from provisioning import actions
from provisioning.models import Route
from provisioning.traffic import export
from tenants.models import Tenant
from tests.browser_support import Daphne, free_port
from tests.conftest import Cluster, new_tenant, wait_for
from tests.nginx_support import Nginx, require_nginx

pytestmark = pytest.mark.cluster


@pytest.fixture
def edge(transactional_db, plans, tmp_path, settings):
    """nginx on a free port in front of daphne and a qcluster that reload it on route changes."""
    require_nginx()
    port, console_port = free_port(), free_port()
    routes = tmp_path / "routes" / "nginx-tenants.conf"
    settings.ROUTES_FILE = str(routes)
    export.write_routes_file()  # the table as it stands (empty), so nginx can start
    nginx = Nginx(tmp_path / "nginx", port=port, routes_file=routes, console_port=console_port)
    checked = nginx.test_config()
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr
    nginx.start()
    # The edge's address is the console's and the tenants' (BASE_DOMAIN, SITE_URL).
    env = {
        "BASE_DOMAIN": f"localhost:{port}",
        "SITE_URL": f"http://localhost:{port}",
        "ROUTES_FILE": str(routes),
        "ROUTES_RELOAD_COMMAND": nginx.reload_command,
    }
    cluster = Cluster(tmp_path, PROVISIONING_BACKOFF_BASE="0.3", **env)
    daphne = Daphne(tmp_path, console_port, **env)
    try:
        yield nginx
    finally:
        daphne.stop()
        cluster.stop()
        nginx.stop()


def until_served_by(nginx: Nginx, http: httpx.Client, host: str, wanted, timeout: float = 10):
    """GET / with ``host`` through nginx until ``wanted(upstream)``: the answer that got there."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get("/", headers={"Host": host})
        upstream = upstream_of(nginx, host.split(":")[0])
        if wanted(upstream):
            return response
        assert time.monotonic() < deadline, (upstream, response.status_code, nginx.error_log())
        time.sleep(0.1)


def upstream_of(nginx: Nginx, host: str, path: str = "/") -> str:
    """Where nginx sent the last request for ``host`` and ``path`` (its access log).

    nginx writes the line after the answer has gone out, so a client can read
    the log before it is there: a moment's wait for it.
    """
    deadline = time.monotonic() + 2
    while not (
        lines := [line for line in nginx.access_log() if line.startswith(f"{host} {path} ")]
    ):
        assert time.monotonic() < deadline, nginx.access_log()
        time.sleep(0.05)
    return lines[-1].rsplit("upstream=", 1)[1]


def test_the_edge_serves_tenants_from_replicas_and_the_console_with_its_websockets(edge, operator):
    base = f"http://127.0.0.1:{edge.port}"
    http = httpx.Client(base_url=base, trust_env=False, timeout=10)
    host = f"acme-demo.localhost:{edge.port}"

    tenant = new_tenant("acme", user=operator)
    wait_for(lambda: Tenant.objects.get(pk=tenant.pk).state != "provisioning", timeout=60,
             message="acme to finish provisioning")  # fmt: skip
    tenant.refresh_from_db()
    assert tenant.state == "active"
    backends = Route.objects.get(tenant=tenant).backends
    assert backends

    # The table nginx started with was empty: activation changed it (the
    # worker writes it once the change commits), and the worker's reload made
    # nginx read it. The tenant host now goes straight to a replica.
    page = until_served_by(edge, http, host, lambda upstream: upstream in backends)
    assert page.status_code == 200
    assert "tenant acme-demo" in page.text
    assert "signal 1 (SIGHUP) received" in edge.error_log()

    # The console (its own host) goes to daphne, and so does its websocket.
    client = Client()
    client.force_login(operator)
    session = client.cookies["sessionid"].value
    with connect(
        f"ws://127.0.0.1:{edge.port}/ws/tenants/",
        origin=f"http://localhost:{edge.port}",
        additional_headers={"Cookie": f"sessionid={session}"},
        open_timeout=10,
    ) as socket:
        first = socket.recv(timeout=10)
    assert "acme" in first
    assert upstream_of(edge, "127.0.0.1", "/ws/tenants/") == edge.console
    signed_out = http.get("/", headers={"Host": f"localhost:{edge.port}"})
    assert signed_out.status_code == 302  # the console's sign-in redirect, through nginx

    # A route change: decommissioning drops the route; the reload makes nginx
    # send the host to the console, which answers 404 for a tenant that is gone.
    actions.decommission_tenant(tenant, user=operator)
    wait_for(lambda: Tenant.objects.get(pk=tenant.pk).state == "decommissioned", timeout=60,
             message="acme to be decommissioned")  # fmt: skip
    gone = until_served_by(edge, http, host, lambda upstream: upstream == edge.console)
    assert gone.status_code == 404
    assert "acme-demo" not in (edge.prefix.parent / "routes" / "nginx-tenants.conf").read_text()
