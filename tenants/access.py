"""Who may see and change a tenant: the one helper every tenant view calls."""

from __future__ import annotations

from typing import Literal

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest

from tenants.lookup import find_tenant
from tenants.models import Tenant
from tenants.validation import may_provision

Role = Literal["operator", "viewer"]


def role_of(user) -> Role:
    """The role that decides what the console offers: operators act, the rest watch."""
    if user is None or not getattr(user, "is_authenticated", False):
        return "viewer"
    return "operator" if may_provision(user) else "viewer"


def get_tenant_for_user(request: HttpRequest, slug: str, *, write: bool = False) -> Tenant:
    """The tenant behind ``slug``; 404 when unknown, 403 when ``write`` is not allowed.

    Every signed-in user may watch every tenant; only operators (and
    superusers) may change one. Views hide what a viewer cannot do, and this
    refuses it when a viewer forces the request anyway.
    """
    tenant = find_tenant(slug)
    if tenant is None:
        raise Http404("No tenant with that slug")
    if write and role_of(request.user) != "operator":
        raise PermissionDenied("Only operators may change tenants.")
    return tenant
