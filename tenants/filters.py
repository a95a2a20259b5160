"""Query-string parsing shared by the pages and the websocket consumers.

Both must read the same filters the same way, or a live push would render a
different set of rows than the page it updates. Nothing here raises: a bad
value falls back to its default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlencode

from tenants.models import STATES

Q_MAX = 60
TYPE_PREFIX_RE = re.compile(r"^[a-z0-9_.]{1,80}$")
SLUG_RE = re.compile(r"^[a-z0-9-]{1,30}$")
MAX_PAGE = 100_000


def _get(params: Mapping, key: str) -> str:
    """One value for ``key``: QueryDicts, plain dicts and parse_qs() lists all work."""
    try:
        value = params.get(key, "")
    except Exception:
        return ""
    if isinstance(value, list | tuple):
        value = value[-1] if value else ""
    if not isinstance(value, str):
        return ""
    return value


ALL = "all"  # every state, decommissioned tenants included


def list_filters(params: Mapping) -> dict:
    """{"state", "q"} for the tenants list.

    ``state`` is one of STATES, "all", or "" (the default: every tenant that
    is not decommissioned, since decommissioned ones are history).
    """
    state = _get(params, "state").strip().lower()
    if state not in STATES and state != ALL:
        state = ""
    q = " ".join(_get(params, "q").split())[:Q_MAX]
    return {"state": state, "q": q}


def audit_filters(params: Mapping) -> dict:
    """{"type_prefix", "tenant", "page"} for the audit feed.

    ``type`` accepts "tenant.provisioning.*", "tenant.provisioning." or
    "tenant.provisioning": all mean "types that start with it".
    """
    type_prefix = _get(params, "type").strip().lower()
    type_prefix = type_prefix.removesuffix("*")
    if not TYPE_PREFIX_RE.match(type_prefix):
        type_prefix = ""
    tenant = _get(params, "tenant").strip().lower()
    if not SLUG_RE.match(tenant):
        tenant = ""
    raw_page = _get(params, "page").strip()
    page = int(raw_page) if raw_page.isdigit() and len(raw_page) < 7 else 1
    page = min(max(page, 1), MAX_PAGE)
    return {"type_prefix": type_prefix, "tenant": tenant, "page": page}


def list_query(filters: Mapping) -> str:
    """The canonical query string of list filters (for links and ws-connect)."""
    return urlencode({k: filters[k] for k in ("state", "q") if filters.get(k)})


def audit_query(filters: Mapping, *, page: int | None = None) -> str:
    pairs = {"type": filters.get("type_prefix", ""), "tenant": filters.get("tenant", "")}
    number = filters.get("page", 1) if page is None else page
    if number and number != 1:
        pairs["page"] = number
    return urlencode({k: v for k, v in pairs.items() if v})
