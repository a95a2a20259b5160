"""The automation API, /api/v1/ (django-ninja): the console's actions for other systems.

Each endpoint parses, calls the one function the console's views and the
commands call (provisioning.actions, tenants.validation through
create_tenant, provisioning.status), and answers JSON. Tokens act as their
user, with that user's role (tenants.access); every event an API request
records carries the token's name (provisioning.audit.acting_through_token).
"""

# No `from __future__ import annotations`: django-ninja reads the endpoints'
# annotations at import, as objects.
import logging
from collections.abc import Callable
from typing import Literal

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError
from django.http import Http404, HttpRequest, JsonResponse
from ninja import Field, NinjaAPI, Router, Schema
from ninja.errors import AuthenticationError, HttpError, Throttled
from ninja.errors import ValidationError as SchemaError
from ninja.pagination import PageNumberPagination, paginate
from ninja.security import HttpBearer

from console.api import idempotency, tokens
from console.api.schemas import (
    ActionIn,
    ErrorOut,
    FieldErrorsOut,
    StatusOut,
    TenantIn,
    TenantSummary,
)
from console.api.throttle import TokenRateThrottle
from provisioning import actions
from provisioning.audit import acting_through_token
from provisioning.status import tenant_status
from tenants.access import get_tenant_for_user, role_of
from tenants.filters import MAX_PAGE
from tenants.models import STATES, Tenant
from tenants.validation import text_error

log = logging.getLogger(__name__)


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        found = tokens.authenticate(token)
        if found is not None:
            # The user's role decides, as in the console (tenants.access).
            request.user = found.user
            request.api_token = found
        return found


api = NinjaAPI(
    title="Tenant console automation API",
    version="1",
    description=(
        "Create tenants and act on them as the console's operators do. "
        "`Authorization: Bearer <token>` (`manage.py create_api_token USERNAME`)."
    ),
    urls_namespace="api-v1",
    auth=BearerToken(),
    throttle=[TokenRateThrottle()],
    docs_url=None,  # the interactive page loads its assets from a CDN; the schema is enough
)


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@api.exception_handler(AuthenticationError)
def _unauthorized(request, exc):
    response = _error(401, "Send a valid API token: Authorization: Bearer <token>.")
    response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(Throttled)
def _throttled(request, exc):
    return _error(429, "Too many requests for this token; slow down and try again.")


@api.exception_handler(HttpError)
def _http_error(request, exc):
    if exc.status_code == 400:  # django-ninja's "Cannot parse request body"
        return _error(400, "The body is not valid JSON.")
    return _error(exc.status_code, str(exc))


@api.exception_handler(SchemaError)
def _schema_error(request, exc):
    """A body or query of the wrong shape, as {"errors": {field: [messages]}}."""
    errors: dict[str, list[str]] = {}
    for problem in exc.errors:
        where = [str(part) for part in problem.get("loc", ()) if part not in ("body", "query")]
        where = [part for part in where if part not in ("payload", "filters")]
        errors.setdefault(where[-1] if where else "__all__", []).append(problem.get("msg", ""))
    return JsonResponse({"errors": errors}, status=400)


@api.exception_handler(Http404)
def _not_found(request, exc):
    return _error(404, "No tenant with that slug.")


@api.exception_handler(PermissionDenied)
def _forbidden(request, exc):
    return _error(403, str(exc) or "Only operators may change tenants.")


def _status(tenant: Tenant, status: int = 200) -> JsonResponse:
    tenant = Tenant.objects.select_related("plan").get(pk=tenant.pk)
    response = JsonResponse(tenant_status(tenant), status=status)
    response["Location"] = f"/api/v1/tenants/{tenant.slug}"
    return response


def _acting(request: HttpRequest, act: Callable[[], JsonResponse]) -> JsonResponse:
    """``act()`` once per Idempotency-Key, its events carrying the token's name; the
    refusals it meets as the contract's answers (kept for a repeated key too)."""

    def answer() -> JsonResponse:
        try:
            with acting_through_token(request.api_token.name):
                return act()
        except ValidationError as exc:
            return JsonResponse({"errors": exc.message_dict}, status=400)
        except actions.ActionError as exc:  # AlreadyUnderWay too: not now, in this state
            return _error(409, str(exc))
        except PermissionDenied as exc:
            return _error(403, str(exc))
        except Http404:
            return _error(404, "No tenant with that slug.")

    return idempotency.answer_once(request, request.api_token, answer)


# The header every POST honours (console.api.idempotency), for the schema.
IDEMPOTENCY_KEY = {
    "parameters": [
        {
            "in": "header",
            "name": idempotency.HEADER,
            "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY},
            "description": "Repeat the request with the same key and body: the first answer, "
            "nothing new; the same key with another request: 409.",
        }
    ]
}
ERRORS = {400: FieldErrorsOut, 401: ErrorOut, 403: ErrorOut, 409: ErrorOut, 429: ErrorOut}
tenants_router = Router(tags=["tenants"])


@tenants_router.post(
    "",
    response={202: StatusOut, **ERRORS},
    summary="Create a tenant",
    openapi_extra=IDEMPOTENCY_KEY,
)
def create(request: HttpRequest, payload: TenantIn):
    """Validates as the console's form does and returns at once (202): a worker provisions.

    Send `Idempotency-Key` to make a retry of this request safe."""

    def act() -> JsonResponse:
        if role_of(request.user) != "operator":
            raise PermissionDenied("Only operators may create tenants.")
        try:
            tenant = actions.create_tenant(
                slug=payload.slug,
                org=payload.org,
                plan=payload.plan,
                admin_email=payload.admin_email,
                user=request.user,
            )
        except IntegrityError:  # taken in the same instant by another request
            return JsonResponse(
                {"errors": {"slug": [f"The slug {payload.slug!r} was just taken."]}}, status=400
            )
        return _status(tenant, 202)

    return _acting(request, act)


MAX_PAGE_SIZE = 200


class Pages(PageNumberPagination):
    """django-ninja's pages, bounded: a page past MAX_PAGE would overflow PostgreSQL's OFFSET."""

    class Input(Schema):
        page: int = Field(1, ge=1, le=MAX_PAGE)
        page_size: int | None = Field(None, ge=1, le=MAX_PAGE_SIZE)


@tenants_router.get("", response=list[TenantSummary], summary="List tenants")
@paginate(Pages, page_size=50, max_page_size=MAX_PAGE_SIZE)
def list_tenants(
    request: HttpRequest,
    state: Literal[tuple(STATES)] | None = None,  # type: ignore[valid-type]
):
    """Newest first; `state` filters (without it, every tenant but decommissioned ones)."""
    tenants = Tenant.objects.select_related("plan").order_by("-created_at", "-id")
    if state:
        return tenants.filter(state=state)
    return tenants.exclude(state=Tenant.State.DECOMMISSIONED)


@tenants_router.get("/{slug}", response={200: StatusOut, 401: ErrorOut, 404: ErrorOut})
def status(request: HttpRequest, slug: str):
    """The status JSON, as `manage.py tenant_status --json` prints it."""
    return _status(get_tenant_for_user(request, slug))


def _action(name: str, call: Callable[[Tenant, HttpRequest, ActionIn], object], doc: str):
    @tenants_router.post(
        "/{slug}/" + name,
        response={202: StatusOut, 404: ErrorOut, **ERRORS},
        summary=f"{name.capitalize()} a tenant",
        description=doc,
        operation_id=f"tenant_{name}",
        openapi_extra=IDEMPOTENCY_KEY,
    )
    def endpoint(request: HttpRequest, slug: str, payload: ActionIn | None = None):
        payload = payload or ActionIn()

        def act() -> JsonResponse:
            if message := text_error(payload.reason, "reason"):
                return JsonResponse({"errors": {"reason": [message]}}, status=400)
            tenant = get_tenant_for_user(request, slug, write=True)
            call(tenant, request, payload)
            return _status(tenant, 202)

        return _acting(request, act)

    return endpoint


_action(
    "cancel",
    lambda t, r, p: actions.request_cancel(t, user=r.user, reason=p.reason),
    "Stop a tenant that is provisioning: it undoes its steps and ends `failed`, cancelled.",
)
_action(
    "retry",
    lambda t, r, p: actions.retry_provisioning(t, user=r.user, force=p.force, reason=p.reason),
    "A new attempt for a failed tenant; past 3 failed attempts it needs `force`.",
)
_action(
    "reset",
    lambda t, r, p: actions.reset_provisioning(t, user=r.user, reason=p.reason),
    "Clear a failed attempt so that the next retry starts from the first step.",
)
_action(
    "decommission",
    lambda t, r, p: actions.decommission_tenant(t, user=r.user, reason=p.reason),
    "Remove everything the tenant has and free its slug.",
)


def _repair(tenant: Tenant, request: HttpRequest, payload: ActionIn) -> None:
    outcome = actions.repair_tenant(tenant, user=request.user, reason=payload.reason, source="api")
    if outcome.error:
        raise actions.ActionError(f"{tenant.slug} could not be repaired: {outcome.error}")


_action(
    "repair",
    _repair,
    "Bring an active tenant's replicas and route to its plan now (answers once done).",
)

api.add_router("/tenants", tenants_router)
