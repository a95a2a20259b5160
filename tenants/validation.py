"""The one place where a tenant request is checked.

The management command, the console's form and the saga's `validate` step all
call ``validate_request``, so nothing passes the form and then fails deeper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from tenants.models import Plan, Tenant

# \A and \Z, not ^ and $: "$" also matches before a trailing newline.
LABEL_RE = re.compile(r"\A[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
MIN_LEN, MAX_LEN = 3, 30
# The shape of Plan.name (a SlugField of 30).
PLAN_NAME_RE = re.compile(r"\A[-a-zA-Z0-9_]{1,30}\Z")
REASON_MAX = 500  # an operator's reason, as the audit log keeps it

# Names that would collide with the console's own hosts or confuse operators.
RESERVED = frozenset(
    {
        "admin", "api", "app", "audit", "console", "dashboard", "default", "healthz",
        "internal", "localhost", "login", "mail", "new", "null", "platform", "root", "static",
        "status", "support", "system", "test", "www", "ws",
    }
)  # fmt: skip


def is_label(value) -> bool:
    """Whether ``value`` could be a slug or org at all.

    Asked before any query by value: PostgreSQL raises on a NUL, and a
    look-alike or a 10k-character value can only be "no such tenant".
    """
    return isinstance(value, str) and len(value) <= MAX_LEN and LABEL_RE.match(value) is not None


def shown(value, limit: int = 40) -> str:
    """``value`` quoted for a message, cut short: an error echoes what was sent, not 10k of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def text_error(value: str, what: str, max_len: int = REASON_MAX) -> str | None:
    """Why ``value`` cannot be kept as free text (a reason), or None.

    PostgreSQL refuses a NUL in text and JSON, and a lone surrogate (what
    Python makes of command-line bytes that are not UTF-8) cannot be encoded
    at all; other control characters would forge lines in logs and output.
    """
    if len(value) > max_len:
        return f"The {what} must be at most {max_len} characters (got {len(value)})."
    if not value.isprintable():
        return f"The {what} may not contain control characters or undecodable bytes."
    return None


def label_error(value: str, what: str) -> str | None:
    """Why ``value`` is not a valid DNS label for ``what``, or None."""
    if not value:
        return f"Enter a {what}."
    if len(value) < MIN_LEN or len(value) > MAX_LEN:
        return f"The {what} must be {MIN_LEN} to {MAX_LEN} characters long (got {len(value)})."
    if not LABEL_RE.match(value):
        if LABEL_RE.match(value.lower()):
            return f"The {what} must be lower-case: use {value.lower()!r}."
        if value.startswith("-") or value.endswith("-"):
            return f"The {what} cannot start or end with '-'."
        return f"The {what} may use only a-z, 0-9 and '-'."
    if value in RESERVED:
        return f"{value!r} is reserved; choose another {what}."
    return None


@dataclass(frozen=True)
class TenantRequest:
    slug: str
    org: str
    plan: Plan
    admin_email: str


def validate_request(
    slug: str,
    org: str,
    plan: str | Plan,
    admin_email: str,
    *,
    user=None,
    exclude_tenant_id: int | None = None,
) -> TenantRequest:
    """Check a request; raise ValidationError keyed by field, or return it cleaned.

    ``user`` is who asks (None for the system). ``exclude_tenant_id`` lets the
    saga re-check a tenant that already holds its slug.
    """
    slug = (slug or "").strip()
    org = (org or "").strip()
    admin_email = (admin_email or "").strip()
    errors: dict[str, str] = {}

    if user is not None and not may_provision(user):
        errors["__all__"] = (
            "You may watch tenants but not create them (ask for the operators group)."
        )

    if message := label_error(slug, "slug"):
        errors["slug"] = message
    else:
        taken = Tenant.objects.filter(slug=slug).exclude(state=Tenant.State.DECOMMISSIONED)
        if exclude_tenant_id is not None:
            taken = taken.exclude(pk=exclude_tenant_id)
        if taken.exists():
            errors["slug"] = f"The slug {slug!r} is taken by a tenant that is not decommissioned."
    if message := label_error(org, "org"):
        errors["org"] = message

    if isinstance(plan, Plan):
        plan_obj = plan
    elif isinstance(plan, str) and PLAN_NAME_RE.match(plan):
        plan_obj = Plan.objects.filter(name=plan).first()
    else:
        plan_obj = None  # not a plan's name: no query (a NUL would make PostgreSQL raise)
    if plan_obj is None:
        names = ", ".join(Plan.objects.values_list("name", flat=True)) or "none defined"
        errors["plan"] = f"Unknown plan {shown(plan)}; choose one of: {names}."

    try:
        validate_email(admin_email)
    except ValidationError:
        errors["admin_email"] = f"{shown(admin_email)} is not a valid email address."

    if errors:
        raise ValidationError(errors)
    return TenantRequest(slug=slug, org=org, plan=plan_obj, admin_email=admin_email.lower())


def may_provision(user) -> bool:
    """Operators (and superusers) may create and act on tenants; viewers may not."""
    if user is None:
        return True
    if not getattr(user, "is_active", False):
        return False
    return user.is_superuser or user.groups.filter(name="operators").exists()


def first_error(exc: ValidationError) -> str:
    """One line for a command's stderr: 'slug: ...'."""
    if hasattr(exc, "error_dict"):
        field, errors = next(iter(exc.error_dict.items()))
        message = errors[0].messages[0] if hasattr(errors[0], "messages") else str(errors[0])
        return message if field == "__all__" else f"{field}: {message}"
    return exc.messages[0]
