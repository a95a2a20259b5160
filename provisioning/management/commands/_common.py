"""What the tenant commands share: finding the tenant, turning errors into one line."""

from __future__ import annotations

from django.core.management.base import CommandError

from tenants.lookup import find_tenant
from tenants.validation import LABEL_RE


def get_tenant(slug: str):
    if not LABEL_RE.match(slug or ""):
        raise CommandError(f"{slug!r} is not a valid slug (a-z, 0-9 and '-')")
    tenant = find_tenant(slug)
    if tenant is None:
        raise CommandError(
            f"no tenant with slug {slug!r}; `manage.py tenant_status` needs an existing one"
        )
    return tenant
