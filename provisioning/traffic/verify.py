"""mark_active's check: does the tenant's URL serve the tenant's page?

Two ways, same answer expected:

- in process (default): the request goes through the proxy's own code path
  (``TenantTrafficRouter``: Host parsing, route lookup, replica choice,
  forwarding), so it needs no console running, as in tests and workers;
- through ``TRAFFIC_VERIFY_URL`` when set (the console or the edge in front of
  it, e.g. ``http://127.0.0.1:8000``): a real HTTP request with the tenant's
  Host, as a user's would be.

The tenant is not active yet while this runs (the route is switched on only
when the step succeeds), so the request carries a short-lived signed header
that lets the proxy forward it anyway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass

import httpx
from django.conf import settings

from provisioning.traffic import proxy


@dataclass
class Verification:
    url: str
    status: int | None
    ok: bool
    ms: int
    detail: str

    def line(self) -> str:
        answer = self.status if self.status is not None else "no answer"
        return f"verified {self.url} -> {answer}, {self.detail} ({self.ms} ms)"


def page_marker(tenant) -> str:
    # The landing page says "tenant <slug>-<org>" (workload_server.render_page).
    return f"tenant {tenant.slug}-{tenant.org}"


def _in_process(hostname: str, token: str) -> tuple[int | None, str]:
    async def fetch() -> tuple[int | None, str]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": [
                (b"host", hostname.encode()),
                (proxy.VERIFY_HEADER, token.encode()),
                (b"user-agent", b"tenant-console-verify"),
            ],
            "client": ("127.0.0.1", 0),
            "server": None,
        }
        answer: dict = {"status": None, "body": b""}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")

        async def never_django(scope, receive, send):
            raise RuntimeError(f"{hostname} is not a tenant host under BASE_DOMAIN")

        try:
            await proxy.TenantTrafficRouter(never_django)(scope, receive, send)
        finally:
            await proxy.close_client()
        return answer["status"], answer["body"].decode("utf-8", "replace")

    # A fresh loop in a fresh thread: the caller may be a worker thread or a
    # test that already runs a loop (Playwright's), where asyncio.run refuses.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, fetch()).result(timeout=60)


def _through_url(base: str, hostname: str, token: str) -> tuple[int | None, str]:
    headers = {"Host": hostname, proxy.VERIFY_HEADER.decode(): token}
    with httpx.Client(timeout=httpx.Timeout(10.0, connect=1.0), trust_env=False) as client:
        response = client.get(base.rstrip("/") + "/", headers=headers)
        return response.status_code, response.text


def verify_tenant(tenant) -> Verification:
    """One attempt: GET / with the tenant's Host; never raises for network errors."""
    hostname = tenant.hostname
    token = proxy.verify_token(hostname)
    base = getattr(settings, "TRAFFIC_VERIFY_URL", "")
    url = f"http://{hostname}/"
    started = time.monotonic()
    try:
        status, body = _through_url(base, hostname, token) if base else _in_process(hostname, token)
    except (httpx.HTTPError, OSError, RuntimeError) as exc:
        status, body = None, f"{exc.__class__.__name__}: {exc}"
    ms = round((time.monotonic() - started) * 1000)
    if base:
        url += f" via {base}"
    if status == 200 and page_marker(tenant) in body:
        return Verification(url, status, True, ms, "tenant page")
    if status == 200:
        detail = f"not the tenant's page (no {page_marker(tenant)!r})"
    elif status is None:
        detail = body[:200]
    else:
        detail = "error page"
    return Verification(url, status, False, ms, detail)
