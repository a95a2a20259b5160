"""The ASGI app in front of Django: tenant hosts are proxied, every other host is Django's.

Requests for `<slug>-<org>.<BASE_DOMAIN>` never reach Django (so its
ALLOWED_HOSTS check does not apply to them); they are answered here:

- no such tenant, or failed / decommissioning / decommissioned: 404
- provisioning: 503 "being provisioned" with Retry-After
- active: forwarded to the route's replicas, round robin, bodies streamed.

A replica that refuses connections sits out for a few seconds (``health``)
and the request moves to the next replica; the route is re-read once on such
a failure, since a restarted container comes back on another port.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

import httpx
from django.utils.crypto import constant_time_compare, salted_hmac

from provisioning.traffic import health, routing
from provisioning.traffic.pages import send_page

log = logging.getLogger("provisioning.traffic")

TIMEOUT = httpx.Timeout(connect=1.0, read=30.0, write=30.0, pool=5.0)
# RFC 9110 section 7.6.1, plus proxy-connection which old clients still send.
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"trailers",
    b"transfer-encoding",
    b"upgrade",
}
IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"}
RETRY_AFTER = b"5"

# mark_active's check of a tenant that is not active yet: a short-lived signed
# header lets that one request through (see verify.py).
VERIFY_HEADER = b"x-tenant-verify"
VERIFY_WINDOW = 120


def verify_token(hostname: str, now: float | None = None) -> str:
    stamp = str(int(now if now is not None else time.time()))
    mac = salted_hmac("provisioning.traffic.verify", f"{hostname.lower()}|{stamp}").hexdigest()
    return f"{stamp}:{mac}"


def token_valid(token: str, hostname: str) -> bool:
    stamp, _, _mac = token.partition(":")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > VERIFY_WINDOW:
        return False
    return constant_time_compare(token, verify_token(hostname, int(stamp)))


# One client (one connection pool) per event loop: an httpx client is bound to
# the loop it first ran on, and daphne runs one loop per process.
_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = httpx.AsyncClient(
            timeout=TIMEOUT,
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=100),
            # Never route tenant traffic through an HTTP(S)_PROXY from the environment.
            trust_env=False,
            follow_redirects=False,
        )
        _clients[loop] = client
    return client


async def close_client() -> None:
    """Close this loop's client (a short-lived loop, as verification runs, must)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestBody:
    """The ASGI request body as an async iterator httpx can stream from.

    ``started`` tells whether any of it was consumed: only a request whose body
    was not consumed can be sent again to another replica.
    """

    def __init__(self, receive):
        self.receive = receive
        self.started = False

    async def __aiter__(self):
        self.started = True
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise httpx.ReadError("client disconnected")
            body = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                return


def forward_headers(scope, host: str) -> list[tuple[bytes, bytes]]:
    """The client's headers minus hop-by-hop ones, plus X-Forwarded-*."""
    raw = list(scope.get("headers", ()))
    listed = set()
    for key, value in raw:
        if key.lower() == b"connection":
            listed |= {v.strip().lower() for v in value.split(b",")}
    drop = HOP_BY_HOP | listed | {VERIFY_HEADER}
    headers, forwarded_for = [], None
    for key, value in raw:
        key = key.lower()
        if key == b"x-forwarded-for":
            forwarded_for = value
        elif key not in drop and not key.startswith(b"x-forwarded-"):
            headers.append((key, value))
    client_ip = (scope.get("client") or ("", 0))[0] or ""
    chain = b", ".join(v for v in (forwarded_for, client_ip.encode()) if v)
    if chain:
        headers.append((b"x-forwarded-for", chain))
    headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
    headers.append((b"x-forwarded-host", host.encode("latin-1")))
    return headers


def target_url(scope, backend: str) -> str:
    path = scope.get("raw_path") or scope.get("path", "/").encode()
    url = f"http://{backend}{path.decode('latin-1')}"
    query = scope.get("query_string") or b""
    return f"{url}?{query.decode('latin-1')}" if query else url


def build_request(client, scope, backend, headers, body) -> httpx.Request:
    request = client.build_request(
        scope["method"], target_url(scope, backend), headers=headers, content=body
    )
    # httpx adds its own defaults; the replica must see the client's request,
    # not, say, an Accept-Encoding the client never sent.
    sent = {k for k, _ in headers}
    for name in ("accept", "accept-encoding", "user-agent"):
        if name.encode() not in sent:
            request.headers.pop(name, None)
    return request


async def forward(key, backends, scope, receive, send, *, host, reload=None, client=None):
    """Send the request to one of ``backends`` and stream its answer back.

    Returns the backend that answered, or None when a 502/504 page was sent.
    ``reload`` (async, returns fresh backends) is called once when every known
    backend failed to connect.
    """
    client = client or get_client()
    method = scope["method"]
    has_body = method not in ("GET", "HEAD") or header(scope, b"content-length") not in (None, "0")
    has_body = has_body or header(scope, b"transfer-encoding") is not None
    body = RequestBody(receive) if has_body else None
    headers = forward_headers(scope, host)
    tried: set[str] = set()
    candidates = health.order(key, backends)
    reloaded = False
    while True:
        for backend in candidates:
            if backend in tried:
                continue
            tried.add(backend)
            try:
                request = build_request(client, scope, backend, headers, body)
            except (httpx.InvalidURL, httpx.LocalProtocolError, ValueError) as exc:
                # A path or header httpx refuses to put on the wire: the client's fault.
                log.info("%s: unforwardable request: %s", host, exc)
                await send_page(send, 400, host)
                return None
            try:
                response = await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing reached the replica: safe to try the next one.
                health.mark_down(backend)
                log.warning("%s: %s refused (%s), trying the next replica", host, backend, exc)
                if body is not None and body.started:
                    break
                continue
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                # A kept-alive connection the replica had closed: the request may
                # have been seen, so only idempotent ones go to another replica.
                log.warning("%s: %s dropped the request (%s)", host, backend, exc)
                if method in IDEMPOTENT and not (body is not None and body.started):
                    continue
                await send_page(send, 502, host)
                return None
            except httpx.TimeoutException:
                await send_page(send, 504, host)
                return None
            except httpx.HTTPError as exc:  # anything else on the way: never a 500
                log.warning("%s: %s failed: %r", host, backend, exc)
                await send_page(send, 502, host)
                return None
            health.mark_up(backend)
            await stream_back(response, send, host)
            return backend
        if reload is None or reloaded or (body is not None and body.started):
            break
        reloaded = True
        candidates = [b for b in health.order(key, await reload()) if b not in tried]
        if not candidates:
            break
    await send_page(send, 502, host, [(b"retry-after", RETRY_AFTER)])
    return None


async def stream_back(response: httpx.Response, send, host: str) -> None:
    headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
    try:
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        # aiter_raw: bytes as the replica sent them (still compressed if it
        # compressed), so Content-Encoding and Content-Length stay true.
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.HTTPError as exc:
        # Too late for an error page: end the response; the client sees it cut short.
        log.warning("%s: replica stopped mid-response: %s", host, exc)
    finally:
        await response.aclose()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def serve_tenant(label: str, host: str, scope, receive, send) -> None:
    if not label:
        await send_page(send, 404, host)
        return
    token = header(scope, VERIFY_HEADER)
    res = await routing.resolve(label, fresh=bool(token))
    verifying = bool(token) and bool(res.hostname) and token_valid(token, res.hostname)
    if res.state in (None, "failed", "decommissioning", "decommissioned"):
        await send_page(send, 404, host)
        return
    if not (res.serving or (verifying and res.backends)):
        await send_page(send, 503, host, [(b"retry-after", RETRY_AFTER)])
        return

    async def reload() -> tuple[str, ...]:
        fresh = await routing.resolve(label, fresh=True)
        return fresh.backends if (fresh.serving or verifying) else ()

    await forward(f"tenant-{res.tenant_id}", res.backends, scope, receive, send,
                  host=host, reload=reload)  # fmt: skip


class TenantTrafficRouter:
    """ASGI middleware: tenant hosts to the proxy, everything else to ``app``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            host = header(scope, b"host")
            label = routing.tenant_space(host)
            if label is not None and scope["type"] == "http":
                await serve_tenant(label, host, scope, receive, send)
                return
            if label is not None:
                # Websockets are not proxied to tenants; and a tenant's host
                # must never reach the console's own consumers.
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)
