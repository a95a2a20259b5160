"""The ASGI app in front of Django: tenant hosts are proxied, every other host is Django's.

Requests for `<slug>-<org>.<BASE_DOMAIN>` never reach Django (so its
ALLOWED_HOSTS check does not apply to them); they are answered here:

- no such tenant, or failed / decommissioning / decommissioned: 404
- provisioning: 503 "being provisioned" with Retry-After
- active: forwarded to the route's replicas, round robin, bodies streamed
  to the replica (daphne has buffered each request body whole before this
  code sees it; see docs/TRAFFIC.md for what the edge must limit).

Only origin-form request targets (``/path?query``) are forwarded: the
upstream URL is assembled from the replica's host and port and that path,
never from text the client sent in the authority position. A body larger
than ``TENANT_MAX_BODY_BYTES`` is answered 413.

A replica that refuses connections sits out for a few seconds (``health``)
and the request moves to the next replica; the route is re-read once on such
a failure, since a restarted container comes back on another port; when
the route has not moved, the replicas' current ports are looked up on their
driver (``repair.follow_ports``, at most every 2 s per tenant).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import weakref
from urllib.parse import quote

import httpx
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils.crypto import constant_time_compare, salted_hmac

from provisioning.repair import follow_ports
from provisioning.traffic import health, routing
from provisioning.traffic.export import BACKEND_RE
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
# Replicas speak plain HTTP on the tenant's network; route backends carry no scheme.
UPSTREAM_SCHEME = "http"
# Content-Length as the proxy accepts it: ASCII digits only (int() would also
# take "+1", "1_0" and non-ASCII digits), and short enough that int() is cheap.
CONTENT_LENGTH_RE = re.compile(rb"[0-9]{1,18}")

# mark_active's check of a tenant that is not active yet: a short-lived signed
# header lets that one request through (see verify.py).
VERIFY_HEADER = b"x-tenant-verify"
VERIFY_WINDOW = 120
# "<unix seconds>:<hex hmac>". Anything else is simply not a token: the header
# comes from the internet, and str.isdigit() accepts "²", which int() refuses.
VERIFY_TOKEN_RE = re.compile(r"(?P<stamp>[0-9]{1,12}):[0-9a-f]{1,128}")

# When every replica of a tenant refuses, the route is checked against the
# replicas' current ports (repair.follow_ports), at most this often per tenant.
FOLLOW_SECONDS = 2.0
_followed: dict[int, float] = {}


def verify_token(hostname: str, now: float | None = None) -> str:
    stamp = str(int(now if now is not None else time.time()))
    mac = salted_hmac("provisioning.traffic.verify", f"{hostname.lower()}|{stamp}").hexdigest()
    return f"{stamp}:{mac}"


def token_valid(token: str, hostname: str) -> bool:
    """Whether ``token`` is this host's and recent; False for any malformed value."""
    match = VERIFY_TOKEN_RE.fullmatch(token)
    if match is None:
        return False
    stamp = int(match["stamp"])
    if abs(time.time() - stamp) > VERIFY_WINDOW:
        return False
    return constant_time_compare(token, verify_token(hostname, stamp))


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
    # latin-1 maps every byte, so a hostile header value never fails to decode.
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def origin_form(scope) -> bytes | None:
    """The request target if it is origin-form (``/path[?query]``), else None.

    daphne hands on whatever the request line held: ``@127.0.0.1:2375/x``,
    ``//127.0.0.1/x`` and ``http://127.0.0.1/x`` all arrive as ``raw_path``.
    Only a path starting with exactly one "/" can never be read as an
    authority, whoever parses the URL next.
    """
    raw = scope.get("raw_path")
    if raw is None:  # optional in ASGI; daphne always sets it
        raw = quote(scope.get("path", "")).encode("ascii")
    if not raw.startswith(b"/") or raw.startswith(b"//"):
        return None
    query = scope.get("query_string") or b""
    return raw + b"?" + query if query else raw


def declared_length(scope) -> int | None:
    """The request's Content-Length; None when absent.

    Raises ValueError for a malformed or ambiguous one (two different values).
    """
    values = {v.strip() for k, v in scope.get("headers", ()) if k.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1 or not CONTENT_LENGTH_RE.fullmatch(next(iter(values))):
        raise ValueError("bad content-length")
    return int(next(iter(values)))


@functools.lru_cache(maxsize=4096)
def upstream(backend: str) -> tuple[str, int] | None:
    """A route backend ("127.0.0.1:32768", "[::1]:8080") as (host, port), parsed
    once per process; None for anything else, which is never connected to."""
    if not BACKEND_RE.fullmatch(backend):
        return None
    host, _, port = backend.rpartition(":")
    if not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


class BodyTooLarge(Exception):
    """The request body passed TENANT_MAX_BODY_BYTES while it was being forwarded."""


class RequestBody:
    """The ASGI request body as an async iterator httpx can stream from.

    ``started`` tells whether any of it was consumed: only a request whose body
    was not consumed can be sent again to another replica. A body without a
    Content-Length (chunked) is counted as it goes and stopped with
    ``BodyTooLarge`` once it passes ``limit``.
    """

    def __init__(self, receive, limit: int):
        self.receive = receive
        self.limit = limit
        self.started = False

    async def __aiter__(self):
        self.started = True
        total = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise httpx.ReadError("client disconnected")
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                raise BodyTooLarge(total)
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


def build_request(client, method, address, target, headers, body) -> httpx.Request:
    # Structured, not concatenated: the host and port are the replica's, and
    # ``target`` (origin-form, checked by serve_tenant) can only be the path.
    host, port = address
    url = httpx.URL(scheme=UPSTREAM_SCHEME, host=host, port=port, raw_path=target)
    request = client.build_request(method, url, headers=headers, content=body)
    # httpx adds its own defaults; the replica must see the client's request,
    # not, say, an Accept-Encoding the client never sent.
    sent = {k for k, _ in headers}
    for name in ("accept", "accept-encoding", "user-agent"):
        if name.encode() not in sent:
            request.headers.pop(name, None)
    return request


async def forward(
    key, backends, scope, receive, send, *, host, target, length, reload=None, client=None
):
    """Send the request to one of ``backends`` and stream its answer back.

    ``target`` is the origin-form path and query to request, ``length`` the
    checked Content-Length (or None). Returns the backend that answered, or
    None when an error page was sent. ``reload`` (async, returns fresh
    backends) is called once when every known backend failed to connect.
    """
    client = client or get_client()
    method = scope["method"]
    has_body = method not in ("GET", "HEAD") or bool(length)
    has_body = has_body or header(scope, b"transfer-encoding") is not None
    body = RequestBody(receive, settings.TENANT_MAX_BODY_BYTES) if has_body else None
    headers = forward_headers(scope, host)
    tried: set[str] = set()
    candidates = health.order(key, backends)
    reloaded = False
    while True:
        for backend in candidates:
            if backend in tried:
                continue
            tried.add(backend)
            address = upstream(backend)
            if address is None:
                log.warning("%s: backend %r is not host:port, skipped", host, backend)
                continue
            try:
                request = build_request(client, method, address, target, headers, body)
            except (httpx.InvalidURL, httpx.LocalProtocolError, ValueError) as exc:
                # A path or header httpx refuses to put on the wire: the client's fault.
                log.info("%s: unforwardable request: %s", host, exc)
                await send_page(send, 400, host)
                return None
            try:
                response = await client.send(request, stream=True)
            except BodyTooLarge:
                # Raised while the body streamed out, before any answer went back.
                log.info("%s: request body over %s bytes", host, body.limit)
                await send_page(send, 413, host)
                return None
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
    # Checked before the route lookup: nothing a client sends here costs a
    # query, and nothing refused here ever reaches a replica.
    target, length = origin_form(scope), None
    try:
        length = declared_length(scope)
    except ValueError:
        target = None  # a Content-Length that can't be trusted: refused like a bad target
    if target is None:
        await send_page(send, 400, host)
        return
    if length is not None and length > settings.TENANT_MAX_BODY_BYTES:
        await send_page(send, 413, host)
        return
    # verify.py signs the Host header it sends, so a token is checked before the
    # route lookup: only a genuine one bypasses the route cache (a junk header
    # must not buy an uncached query per request).
    token = header(scope, VERIFY_HEADER)
    signed = token is not None and token_valid(token, host)
    res = await routing.resolve(label, fresh=signed)
    verifying = signed and res.hostname.lower() == host.lower()
    if res.state in (None, "failed", "decommissioning", "decommissioned"):
        await send_page(send, 404, host)
        return
    if not (res.serving or (verifying and res.backends)):
        await send_page(send, 503, host, [(b"retry-after", RETRY_AFTER)])
        return

    async def reload() -> tuple[str, ...]:
        fresh = await routing.resolve(label, fresh=True)
        # Nobody has moved the route yet: the replicas may answer on new ports
        # (an engine restart). Ask their driver rather than wait for the
        # repair loop's next pass.
        stale = fresh.serving and fresh.backends == res.backends
        if stale and _may_follow(res.tenant_id):
            moved = await database_sync_to_async(follow_ports)(res.tenant_id)
            fresh = await routing.resolve(label, fresh=True) if moved else fresh
        return fresh.backends if (fresh.serving or verifying) else ()

    await forward(f"tenant-{res.tenant_id}", res.backends, scope, receive, send,
                  host=host, target=target, length=length, reload=reload)  # fmt: skip


def _may_follow(tenant_id: int | None) -> bool:
    """At most one port lookup per tenant per FOLLOW_SECONDS in this process: a tenant
    whose replicas are all down costs one driver call per interval, not one per request."""
    if tenant_id is None:
        return False
    now = time.monotonic()
    if now - _followed.get(tenant_id, -FOLLOW_SECONDS) < FOLLOW_SECONDS:
        return False
    if len(_followed) > 10_000:
        _followed.clear()
    _followed[tenant_id] = now
    return True


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
