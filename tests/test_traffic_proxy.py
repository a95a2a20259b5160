"""The tenant proxy against a plain echo server (no Docker), the routes file,
and the verification's failure path."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from provisioning.models import Route
from provisioning.traffic import export, health, routing
from provisioning.traffic.verify import verify_tenant
from tenants.models import Tenant
from tests.browser_support import free_port, served_console

pytestmark = pytest.mark.django_db(transaction=True)


class Echo(BaseHTTPRequestHandler):
    """Answers with what it received, so the test can see what the proxy forwarded."""

    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        if self.headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                chunk = self.rfile.read(size + 2)[:size]
                if not size:
                    break
                body += chunk
        else:
            body = self.rfile.read(length) if length else b""
        status = 418 if self.path.startswith("/teapot") else 200
        data = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode(),
                "port": self.server.server_address[1],
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Replica", str(self.server.server_address[1]))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_servers():
    servers = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [f"127.0.0.1:{s.server_address[1]}" for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(settings, tmp_path, plans):
    with served_console(settings, tmp_path) as server_and_client:
        yield server_and_client


def tenant_with_route(plans, backends, *, slug="echo", state="active", enabled=True):
    tenant = Tenant.objects.create(
        slug=slug, org="my-org", plan=plans["free"], admin_email="a@example.com", state=state
    )
    Route.objects.create(
        tenant=tenant, hostname=tenant.hostname, backends=backends, enabled=enabled
    )
    return tenant


def test_methods_bodies_headers_and_statuses_pass_through(served, echo_servers, plans):
    _, client = served
    tenant = tenant_with_route(plans, echo_servers)
    host = tenant.hostname  # "echo-my-org...": slug and org split at the right "-"
    headers = {"Host": host, "X-Custom": "yes", "Connection": "keep-alive, X-Drop", "X-Drop": "1"}

    got = client.post("/submit?a=1&b=%20", content=b"x" * 100_000, headers=headers).json()
    assert got["method"] == "POST" and got["path"] == "/submit?a=1&b=%20"
    assert got["body"] == "x" * 100_000
    seen = got["headers"]
    assert seen["host"] == host and seen["x-custom"] == "yes"
    assert "x-drop" not in seen  # named in Connection: hop-by-hop
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http" and seen["x-forwarded-host"] == host

    def chunks():
        yield b"hello "
        yield b"streamed world"

    streamed = client.put("/s", content=chunks(), headers={"Host": host}).json()
    assert streamed["method"] == "PUT" and streamed["body"] == "hello streamed world"
    assert client.delete("/d", headers={"Host": host}).json()["method"] == "DELETE"
    assert client.get("/teapot", headers={"Host": host}).status_code == 418
    assert client.head("/", headers={"Host": host}).status_code == 200

    # Odd bytes in the path or query are forwarded or refused, never a 500.
    odd = b"GET /p%%zz\xff?q=\xfe HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
    assert raw_status(served[0].port, odd % host.encode()) < 500

    # Round robin: both replicas answer.
    ports = {client.get("/", headers={"Host": host}).headers["x-replica"] for _ in range(6)}
    assert len(ports) == 2


def test_a_replica_that_refuses_connections_leaves_the_rotation(served, echo_servers, plans):
    _, client = served
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    tenant = tenant_with_route(plans, [dead, *echo_servers])
    answers = [client.get("/", headers={"Host": tenant.hostname}) for _ in range(9)]
    assert {r.status_code for r in answers} == {200}
    assert dead.split(":")[1] not in {r.headers["x-replica"] for r in answers}


def test_all_replicas_down_is_502_and_states_map_to_404_or_503(served, plans):
    _, client = served
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    down = tenant_with_route(plans, dead, slug="down")
    response = client.get("/", headers={"Host": down.hostname})
    assert response.status_code == 502 and "not answering" in response.text
    for state, code in [("provisioning", 503), ("failed", 404), ("decommissioning", 404)]:
        tenant = tenant_with_route(plans, dead, slug=f"s-{state[:5]}", state=state, enabled=False)
        assert client.get("/", headers={"Host": tenant.hostname}).status_code == code, state


def test_only_a_valid_verification_header_reaches_a_tenant_not_yet_active(
    served, echo_servers, plans
):
    from provisioning.traffic.proxy import verify_token

    _, client = served
    tenant = tenant_with_route(plans, echo_servers, state="provisioning", enabled=False)
    for forged in ["1:abc", verify_token("other-host.localhost"), verify_token(tenant.hostname, 1)]:
        headers = {"Host": tenant.hostname, "X-Tenant-Verify": forged}
        assert client.get("/", headers=headers).status_code == 503, forged
    headers = {"Host": tenant.hostname, "X-Tenant-Verify": verify_token(tenant.hostname)}
    answer = client.get("/", headers=headers)
    assert answer.status_code == 200
    assert "x-tenant-verify" not in answer.json()["headers"]  # never forwarded


def test_the_routes_file_lists_enabled_routes_and_is_replaced_atomically(settings, tmp_path, plans):
    settings.ROUTES_FILE = str(tmp_path / "routes" / "nginx-tenants.conf")
    settings.BASE_DOMAIN = "tenants.example.com"
    on = tenant_with_route(plans, ["127.0.0.1:4001", "127.0.0.1:4002"], slug="live")
    tenant_with_route(plans, ["127.0.0.1:4003"], slug="dark", state="provisioning", enabled=False)
    path = export.routes_path()
    text = path.read_text()  # written by the post_save receiver after commit
    assert "map $host $tenant_upstream {" in text
    assert f"    live-my-org.tenants.example.com tenant_{on.pk};" in text
    assert f"upstream tenant_{on.pk} {{" in text
    assert "server 127.0.0.1:4001 max_fails=1 fail_timeout=5s;" in text
    assert "127.0.0.1:4003" not in text and "dark-my-org" not in text

    inode = os.stat(path).st_ino
    Route.objects.filter(tenant=on).delete()  # post_delete rewrites it
    assert (
        os.stat(path).st_ino != inode
    )  # a new file replaced the old one, never rewritten in place
    assert "live-my-org" not in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left

    # Junk in a backend never reaches the edge's configuration.
    bad = tenant_with_route(plans, ["127.0.0.1:1; include /etc/passwd"], slug="bad")
    assert f"tenant_{bad.pk}" not in path.read_text()


def test_verification_fails_when_the_url_does_not_serve_the_tenants_page(
    settings, echo_servers, plans
):
    settings.BASE_DOMAIN = "localhost:8000"
    routing.forget()
    tenant = tenant_with_route(plans, echo_servers, state="provisioning", enabled=False)
    result = verify_tenant(tenant)  # in process, through the proxy code path
    assert not result.ok and result.status == 200
    assert "not the tenant's page" in result.line()
    dead = tenant_with_route(
        plans, [f"127.0.0.1:{free_port()}"], slug="gone", state="provisioning", enabled=False
    )
    assert verify_tenant(dead).status == 502


def raw_status(port: int, request: bytes) -> int:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_requests_with_no_or_odd_host_headers_never_get_a_500(served):
    server, _ = served
    port = server.port
    for request in [
        b"GET / HTTP/1.0\r\n\r\n",  # no Host at all
        b"GET / HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \xff\xfe.localhost\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
        % f"UPPER-CASE.localhost:{port}".encode(),
    ]:
        status = raw_status(port, request)
        assert status < 500, (request, status)


@pytest.mark.parametrize(
    "base, host, expected",
    [
        ("localhost:8000", "acme-demo.localhost:8000", "acme-demo"),
        ("localhost:8000", "ACME-Demo.LocalHost:8000", "acme-demo"),
        ("localhost:8000", "acme-demo.localhost.:8000", "acme-demo"),
        ("localhost:8000", "acme-demo.localhost:9000", None),  # another port: not ours
        ("localhost:8000", "acme-demo.localhost", None),
        ("localhost:8000", "localhost:8000", None),  # the console itself
        ("localhost:8000", "a.b.localhost:8000", ""),  # under BASE_DOMAIN, not a label: 404
        ("localhost:8000", "-bad-.localhost:8000", ""),
        ("localhost:8000", "[::1]:8000", None),
        ("localhost:8000", "", None),
        ("localhost:8000", None, None),
        ("example.com", "acme-demo.example.com", "acme-demo"),
        ("example.com", "acme-demo.example.com:443", "acme-demo"),  # no port in BASE_DOMAIN
        ("example.com", "acme-demo.example.com.evil.org", None),
        ("example.com", "acme-demoexample.com", None),
    ],
)
def test_tenant_space_parses_hosts_strictly(settings, base, host, expected):
    settings.BASE_DOMAIN = base
    assert routing.tenant_space(host) == expected


def test_round_robin_skips_cooling_down_backends_but_never_empties():
    health.reset()
    backends = ("a:1", "b:2", "c:3")
    firsts = [health.order("t", backends)[0] for _ in range(3)]
    assert firsts == ["a:1", "b:2", "c:3"]
    health.mark_down("b:2")
    assert all("b:2" not in health.order("t", backends) for _ in range(3))
    health.mark_up("b:2")
    assert "b:2" in health.order("t", backends)
    for b in backends:
        health.mark_down(b)
    assert sorted(health.order("t", backends)) == sorted(backends)  # all down: try all anyway
    health.reset()


def test_a_websocket_to_a_tenant_host_is_closed_and_never_reaches_the_console(settings):
    import asyncio

    from provisioning.traffic.proxy import TenantTrafficRouter

    settings.BASE_DOMAIN = "localhost:8000"
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    async def console(scope, receive, send):
        raise AssertionError("a tenant host reached the console")

    scope = {
        "type": "websocket",
        "path": "/ws/tenants/",
        "headers": [(b"host", b"a-b.localhost:8000")],
    }
    asyncio.run(TenantTrafficRouter(console)(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]
