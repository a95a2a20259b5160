"""Which pages may open the console's websockets: the console's own, and no other.

A browser lets any page open a websocket to any host and sends that host's
cookies with it; the Origin header is the only thing that tells the console's
pages from a tenant's page or another site's (cross-site websocket hijacking).
So an Origin must equal one of the console's own origins, compared by scheme,
host and port: ``SITE_URL`` and every entry of ``CSRF_TRUSTED_ORIGINS``.
Wildcard entries (``https://*.example.com``) are not honoured here: tenants'
pages live on subdomains, so list the console's origins exactly.

A tenant's host is refused even when it is listed, since its pages are the
tenants' untrusted content. A handshake with no Origin is refused too:
browsers always send one on websockets, so only a non-browser client lacks
it, and such a client holding a session cookie can send ``Origin`` itself.
Refusing is the safe default that costs a legitimate client one header.
A refused handshake is closed before it is accepted (an HTTP 403).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings

from provisioning.traffic.routing import tenant_space

DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # scheme, host, port


def parse_origin(value: str) -> Origin | None:
    """``value`` as (scheme, host, port), or None when it is not an http(s) origin."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme]


def console_origins() -> set[Origin]:
    """The origins the console's own pages are served from."""
    configured = [settings.SITE_URL, *settings.CSRF_TRUSTED_ORIGINS]
    return {origin for value in configured if (origin := parse_origin(value)) is not None}


def origin_allowed(headers) -> bool:
    """Whether a handshake with these ASGI headers comes from one of the console's pages."""
    values = [value for name, value in headers if name == b"origin"]
    if len(values) != 1:
        return False  # none (see above), or several: ambiguous, so refused
    origin = parse_origin(values[0].decode("latin-1"))
    if origin is None:
        return False  # "null" (sandboxed frames, file: pages) or garbage
    scheme, host, port = origin
    netloc = host if port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    if tenant_space(netloc) is not None:
        return False
    return origin in console_origins()


class ConsoleOriginValidator:
    """Channels middleware: pass a websocket on only when ``origin_allowed``.

    Channels' ``AllowedHostsOriginValidator`` compares hosts with
    ``ALLOWED_HOSTS``, ignoring the port, so ".localhost" let every tenant's
    page in; its ``OriginValidator`` also lets a malformed port raise.
    """

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if origin_allowed(scope.get("headers", [])):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
