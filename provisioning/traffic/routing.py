"""Which tenant a Host header names, and where that tenant's traffic goes.

The Host is parsed strictly: anything that is not `<label>.<BASE_DOMAIN>` is
left to Django (which answers 400 for hosts it does not allow), so no text a
user can type reaches a database query unchecked.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import Q

# A tenant label is "<slug>-<org>": two DNS labels of 3..30 [a-z0-9-] joined by "-".
LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,59}[a-z0-9])?$")
# Host header grammar we accept at all: a DNS name and an optional port.
HOST_RE = re.compile(r"^(?P<name>[a-z0-9.-]{1,253})(?::(?P<port>[0-9]{1,5}))?$")

# A resolution is cached this long per label: a burst of page loads costs one
# query, and a state change (activated, decommissioned) shows within ~1 s.
CACHE_SECONDS = 1.5


@dataclass(frozen=True)
class Resolution:
    """What the proxy needs to know about a tenant label."""

    label: str
    state: str | None = None  # None: no tenant has this label
    tenant_id: int | None = None
    hostname: str = ""
    backends: tuple[str, ...] = ()
    enabled: bool = False

    @property
    def serving(self) -> bool:
        return self.state == "active" and self.enabled and bool(self.backends)


def _split(host: str) -> tuple[str, str | None] | None:
    match = HOST_RE.match(host.strip().lower())
    if not match:
        return None
    return match["name"].rstrip("."), match["port"]


@functools.lru_cache(maxsize=4)
def _base(base_domain: str) -> tuple[str, str | None] | None:
    """BASE_DOMAIN, split once per value rather than on every request."""
    return _split(base_domain)


def tenant_space(host: str | None) -> str | None:
    """The part of ``host`` before ".<BASE_DOMAIN>", or None when the host is not a tenant's.

    "" means "under BASE_DOMAIN but not a valid tenant label" (answer 404 there
    rather than letting Django serve the console at a tenant-looking host).
    Hosts compare case-insensitively; when BASE_DOMAIN names a port, the Host
    must carry the same one; when it names none, any port matches (an edge may
    or may not pass it on).
    """
    if not host:
        return None
    got, base = _split(host), _base(settings.BASE_DOMAIN)
    if got is None or base is None:
        return None
    (name, port), (base_name, base_port) = got, base
    if base_port is not None and port != base_port:
        return None
    if not name.endswith("." + base_name):
        return None
    label = name[: -len(base_name) - 1]
    return label if LABEL_RE.match(label) else ""


def resolve_label(label: str) -> Resolution:
    """Look the label up in the database (sync). Slug and org may both hold "-",
    so every split point is a candidate; the live tenant wins over a past one."""
    from tenants.models import Tenant

    if not label or not LABEL_RE.match(label):
        return Resolution(label)
    query = Q()
    for i, char in enumerate(label):
        if char == "-":
            query |= Q(slug=label[:i], org=label[i + 1 :])
    if not query:
        return Resolution(label)
    rank = {"active": 0, "provisioning": 1, "decommissioning": 2, "failed": 3}
    tenants = sorted(
        Tenant.objects.filter(query).exclude(state="decommissioned").select_related("route"),
        key=lambda t: (rank.get(t.state, 9), -t.pk),
    )
    if not tenants:
        return Resolution(label)
    tenant = tenants[0]
    route = getattr(tenant, "route", None)
    return Resolution(
        label,
        state=tenant.state,
        tenant_id=tenant.pk,
        hostname=tenant.hostname,
        backends=tuple(route.backends or ()) if route else (),
        enabled=bool(route and route.enabled),
    )


_cache: dict[str, tuple[float, Resolution]] = {}


async def resolve(label: str, *, fresh: bool = False) -> Resolution:
    """Cached ``resolve_label`` for async code; ``fresh`` re-reads (after a backend failed)."""
    now = time.monotonic()
    cached = _cache.get(label)
    if cached and not fresh and now - cached[0] < CACHE_SECONDS:
        return cached[1]
    # database_sync_to_async closes stale connections around the query, as
    # Channels consumers do; the cache keeps this off the hot path.
    resolution = await database_sync_to_async(resolve_label)(label)
    if len(_cache) > 10_000:  # random hosts must not grow memory without bound
        _cache.clear()
    _cache[label] = (time.monotonic(), resolution)
    return resolution


def forget(label: str | None = None) -> None:
    """Drop cached resolutions (all of them without a label): tests and failures."""
    if label is None:
        _cache.clear()
    else:
        _cache.pop(label, None)
