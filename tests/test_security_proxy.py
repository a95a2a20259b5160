"""Hostile requests to a tenant host, sent straight over a socket to a real daphne:
no request target, body or header makes the proxy reach anything but the
tenant's replicas, send an oversized body on, or answer 500. And /healthz
keeps the database's error to the log."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import ThreadingHTTPServer

import pytest
from django.db import connection

from tests.browser_support import served_console
from tests.test_traffic_proxy import Echo, echo_servers, raw_status, tenant_with_route  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

# Small enough that a test body passes it cheaply; the daphne below runs with it.
BODY_LIMIT = 1000


class Recording(Echo):
    """Echo that also notes every request line it parses, well-formed or not."""

    def parse_request(self):
        self.server.seen.append(self.raw_requestline)
        return super().parse_request()


@pytest.fixture
def canary():
    """An HTTP server on 127.0.0.1 that records whatever reaches it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def served(monkeypatch, settings, tmp_path, plans):
    """daphne (a subprocess, so the limit goes through its environment) with a small body limit."""
    monkeypatch.setenv("TENANT_MAX_BODY_BYTES", str(BODY_LIMIT))
    with served_console(settings, tmp_path) as server_and_client:
        yield server_and_client


def answer(port: int, request: bytes) -> tuple[int, bytes]:
    """Status and whole body of one raw request (sent with Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def request(target: str, host: str, *, headers: bytes = b"", body: bytes = b"") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
        + headers
        + b"\r\n"
        + body
    )


def test_only_origin_form_targets_reach_a_replica(served, echo_servers, canary, plans):  # noqa: F811
    server, client = served
    tenant = tenant_with_route(plans, echo_servers)
    port = canary.server_address[1]
    for target in [
        f"@127.0.0.1:{port}/x",
        f"//127.0.0.1:{port}/x",
        f"http://127.0.0.1:{port}/x",
        f"http://{tenant.hostname}/x",  # absolute-form naming the tenant itself
        "*",
        "x",
    ]:
        status, body = answer(server.port, request(target, tenant.hostname))
        assert status == 400, (target, status, body)
        assert b"could not be forwarded" in body
    assert canary.seen == []

    # The same tenant serves origin-form requests, and the canary records
    # whatever does reach it: the 400s above are the proxy's refusals.
    got = json.loads(answer(server.port, request("/x?a=@127.0.0.1", tenant.hostname))[1])
    assert got["path"] == "/x?a=@127.0.0.1" and got["port"] != port
    assert client.get(f"http://127.0.0.1:{port}/direct").status_code == 200
    assert canary.seen == [b"GET /direct HTTP/1.1\r\n"]


def test_a_body_over_the_limit_gets_413_and_is_not_forwarded(served, canary, plans):
    server, client = served
    tenant = tenant_with_route(plans, [f"127.0.0.1:{canary.server_address[1]}"])
    headers = {"Host": tenant.hostname}

    big = client.post("/upload", content=b"x" * (BODY_LIMIT + 1), headers=headers)
    assert big.status_code == 413 and "larger than this server accepts" in big.text
    assert canary.seen == []

    # A body without Content-Length is counted as it is streamed out.
    chunked = b"Transfer-Encoding: chunked\r\n"
    size = BODY_LIMIT * 3
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (size, b"y" * size)
    status, _ = answer(server.port, request("/upload", tenant.hostname, headers=chunked, body=body))
    assert status == 413

    # At the limit it goes through whole.
    exact = client.post("/upload", content=b"z" * BODY_LIMIT, headers=headers)
    assert exact.status_code == 200 and exact.json()["body"] == "z" * BODY_LIMIT


def test_a_content_length_nobody_can_be_sure_of_is_refused_not_guessed_at():
    """daphne (twisted) refuses most of these itself; the proxy must not rely
    on the server in front of it: verification calls it in process, too."""
    from provisioning.traffic.proxy import declared_length

    def scope(*values):
        return {"headers": [(b"content-length", v) for v in values]}

    assert declared_length(scope()) is None
    assert declared_length(scope(b"12", b"12")) == 12
    for values in [(b"+5",), (b"1_0",), (b"\xb2",), (b"\xd9\xa3",), (b"9" * 5000,), (b"1", b"2")]:
        with pytest.raises(ValueError):
            declared_length(scope(*values))


def test_a_malformed_verification_header_is_just_not_a_token(served, echo_servers, plans):  # noqa: F811
    server, _ = served
    pending = tenant_with_route(plans, echo_servers, state="provisioning", enabled=False)
    hosts = [(pending.hostname, 503), (f"nobody-demo.localhost:{server.port}", 404)]
    for token in [
        b"\xb2:x",  # latin-1 superscript two: str.isdigit() says yes, int() says no
        b"\xb3\xb9:abc",
        "\u0663:x".encode(),  # an Arabic-Indic digit, as UTF-8
        b"9" * 5000 + b":x",  # past int()'s 4300-digit limit
        b":",
        b"-1:abc",
        b"1_0:abc",
        b"%d:%s" % (10**11, b"f" * 5000),
    ]:
        hostile = b"X-Tenant-Verify: " + token + b"\r\n"
        for host, expected in hosts:
            status = raw_status(server.port, request("/", host, headers=hostile))
            assert status == expected, (token[:20], host, status)


def test_healthz_keeps_the_database_error_out_of_its_answer(client, caplog):
    """A real failed connection, not a mocked one: the live connection is closed
    and pointed at the same server as a role that does not exist, so psycopg's
    own error text (it names host, port and role) is what healthz must hide."""
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict["USER"] = "no-such-role-h1"
    try:
        with caplog.at_level(logging.WARNING, logger="provisioning"):
            response = client.get("/healthz")
    finally:
        connection.close()
        connection.settings_dict.update(saved)
    assert response.status_code == 503
    assert response.json() == {"status": "error", "database": "unavailable"}
    logged = caplog.text
    assert "no-such-role-h1" in logged  # the details are in the log, for operators
    assert "no-such-role-h1" not in response.content.decode()


@pytest.mark.asyncio
async def test_only_a_genuine_verification_token_bypasses_the_route_cache(monkeypatch):
    """A junk (but well-formed and current) token must not buy an uncached route query."""
    import time

    from provisioning.traffic import proxy, routing

    host = "acme-demo.localhost:8000"
    asked: list[bool] = []

    async def resolve(label, fresh=False):
        asked.append(fresh)
        return routing.Resolution(label=label)

    async def send(message):
        pass

    monkeypatch.setattr(routing, "resolve", resolve)
    genuine = proxy.verify_token(host)
    forged = f"{int(time.time())}:{'0' * 64}"
    for token, expected in [(forged, False), (genuine, True), (proxy.verify_token("x.y"), False)]:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": [(b"host", host.encode()), (proxy.VERIFY_HEADER, token.encode())],
        }
        await proxy.serve_tenant("acme-demo", host, scope, None, send)
        assert asked.pop() is expected, token
