"""What the tenant commands share: checking arguments, finding the tenant, one-line errors.

Arguments are checked before anything is looked up or changed: a NUL (possible
through call_command), bytes that are not UTF-8 (Python turns them into lone
surrogates), or a 10k-character value get one CommandError line, never a
traceback from PostgreSQL.
"""

from __future__ import annotations

import argparse
import math

from django.core.management.base import CommandError

from tenants.lookup import find_tenant
from tenants.validation import is_label, shown, text_error


def get_tenant(slug: str):
    if not is_label(slug):
        raise CommandError(f"{shown(slug)} is not a valid slug (a-z, 0-9 and '-')")
    tenant = find_tenant(slug)
    if tenant is None:
        raise CommandError(
            f"no tenant with slug {slug!r}; `manage.py tenant_status` needs an existing one"
        )
    return tenant


def checked_reason(reason: str) -> str:
    """``--reason`` as the audit log can keep it, or a CommandError."""
    if message := text_error(reason, "reason"):
        raise CommandError(f"--reason: {message}")
    return reason


def seconds(text: str) -> float:
    """``--timeout``: float() alone takes "nan", "inf" and negatives, which never end a wait."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive number of seconds, not {shown(text)}"
        )
    return value
