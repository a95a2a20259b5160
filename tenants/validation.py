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

LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
MIN_LEN, MAX_LEN = 3, 30

# Names that would collide with the console's own hosts or confuse operators.
RESERVED = frozenset(
    {
        "admin", "api", "app", "audit", "console", "dashboard", "default", "healthz",
        "internal", "localhost", "login", "mail", "new", "null", "platform", "root", "static",
        "status", "support", "system", "test", "www", "ws",
    }
)  # fmt: skip


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

    plan_obj = plan if isinstance(plan, Plan) else Plan.objects.filter(name=plan or "").first()
    if plan_obj is None:
        names = ", ".join(Plan.objects.values_list("name", flat=True)) or "none defined"
        errors["plan"] = f"Unknown plan {plan!r}; choose one of: {names}."

    try:
        validate_email(admin_email)
    except ValidationError:
        errors["admin_email"] = f"{admin_email!r} is not a valid email address."

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
