"""Query-string parsing shared by the pages and the websocket consumers.

Both must read the same filters the same way, or a live push would render a
different set of rows than the page it updates. Nothing here raises: a bad
value falls back to its default, and nothing that PostgreSQL would refuse
(a NUL, an undecodable byte) gets through to a query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlencode

from tenants.models import STATES

Q_MAX = 60
# \A and \Z, not ^ and $: "$" also matches before a trailing newline.
TYPE_PREFIX_RE = re.compile(r"\A[a-z0-9_.]{1,80}\Z")
SLUG_RE = re.compile(r"\A[a-z0-9-]{1,30}\Z")
# ASCII digits only: str.isdigit() also says yes to "²" (which int() refuses)
# and "٣" (which int() reads as 3); nine digits bound the work int() does.
DIGITS_RE = re.compile(r"\A[0-9]{1,9}\Z")
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


def whole_number(raw, *, default: int, maximum: int) -> int:
    """A whole number from 1 up to ``maximum`` (larger ones are capped); anything else: ``default``.

    The one parser for integer query parameters (``page``, ``hours``, ``limit``).
    """
    text = raw.strip() if isinstance(raw, str) else ""
    if not DIGITS_RE.match(text) or int(text) < 1:
        return default
    return min(int(text), maximum)


def search_text(raw: str, limit: int = Q_MAX) -> str:
    """Free text for a search: whitespace runs made one space, unprintable characters
    (NUL, controls, the lone surrogates of undecodable bytes) dropped, at most ``limit``."""
    text = " ".join(raw.split())
    return "".join(ch for ch in text if ch.isprintable())[:limit].strip()


ALL = "all"  # every state, decommissioned tenants included


def list_filters(params: Mapping) -> dict:
    """{"state", "q"} for the tenants list.

    ``state`` is one of STATES, "all", or "" (the default: every tenant that
    is not decommissioned, since decommissioned ones are history).
    """
    state = _get(params, "state").strip().lower()
    if state not in STATES and state != ALL:
        state = ""
    q = search_text(_get(params, "q"))
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
    page = whole_number(_get(params, "page"), default=1, maximum=MAX_PAGE)
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
