"""The tenants pages: list, create, detail, and the action endpoints (and the banner's dismiss).

Each view parses input, calls one action, and renders; the pages and the
htmx responses render the same regions (``console.fragments``) the websocket
layer pushes.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console import fragments
from console.forms import ActionForm, DecommissionForm, RepairForm, RetryForm, TenantForm
from provisioning import actions, diagnostics, dryrun
from provisioning.failures import dismiss_failure
from provisioning.models import ProvisioningRun
from tenants.access import get_tenant_for_user, role_of
from tenants.filters import list_filters, list_query
from tenants.models import Tenant


@login_required
@require_GET
def tenant_list(request: HttpRequest) -> HttpResponse:
    filters = list_filters(request.GET)
    query = list_query(filters)
    role = role_of(request.user)
    context, regions = fragments.list_page(role=role, **filters)
    context = {
        **context,
        "regions": fragments.as_context([*regions, *fragments.banner_page(request.user)]),
        "role": role,
        "nav": "tenants",
        "filters": filters,
        "states": Tenant.State.choices,
        "ws_url": "/ws/tenants/" + (f"?{query}" if query else ""),
    }
    return render(request, "tenants/list.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def tenant_new(request: HttpRequest) -> HttpResponse:
    if role_of(request.user) != "operator":
        raise PermissionDenied("Only operators may create tenants.")
    form = TenantForm(request.POST if request.method == "POST" else None, user=request.user)
    check = None
    if request.method == "POST" and "check" in request.POST:
        # "Check": the validate step's checks and what would be created; nothing is written.
        check = dryrun.describe(form.request) if form.is_valid() else {"ok": False}
    elif request.method == "POST" and form.is_valid():
        try:
            # Returns at once: the run is only enqueued, a worker does the rest.
            tenant = actions.create_tenant(
                slug=form.request.slug,
                org=form.request.org,
                plan=form.request.plan.name,
                admin_email=form.request.admin_email,
                user=request.user,
                faults=form.injected,
            )
        except ValidationError as exc:  # the slug was taken since the form checked it
            form.add_validation_error(exc)
        except IntegrityError:  # ... or in the same instant, by another request
            form.add_error("slug", f"The slug {form.request.slug!r} was just taken.")
        else:
            messages.success(request, "Provisioning started")
            return redirect("tenant-detail", slug=tenant.slug)
    context = {"form": form, "role": "operator", "nav": "tenants", "check": check}
    return render(request, "tenants/new.html", context)


@login_required
@require_GET
def tenant_diagnostics(request: HttpRequest, slug: str) -> JsonResponse:
    """The escalation bundle of ``manage.py tenant_diagnostics --json``, for "Copy diagnostics"."""
    tenant = get_tenant_for_user(request, slug)
    response = JsonResponse(diagnostics.bundle(tenant), json_dumps_params={"indent": 2})
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
def tenant_detail(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_tenant_for_user(request, slug)
    context, regions = fragments.detail_page(tenant, role=role_of(request.user))
    context.update(
        regions=fragments.as_context(regions), nav="tenants", ws_url=f"/ws/tenants/{tenant.slug}/"
    )
    return render(request, "tenants/detail.html", context)


def _finish(request: HttpRequest, tenant: Tenant, level: int, text: str) -> HttpResponse:
    """Say how it went: a toast with fresh fragments for htmx, else a message and a redirect."""
    if request.htmx:
        tag = messages.DEFAULT_TAGS.get(level, "info")
        html = fragments.detail_fragments(tenant, role=role_of(request.user))
        return HttpResponse(html + fragments.toast(tag, text))
    messages.add_message(request, level, text)
    return redirect("tenant-detail", slug=tenant.slug)


def _act(
    request: HttpRequest,
    slug: str,
    form_class: type[ActionForm],
    action: Callable[[Tenant, dict], object],
    done: str,
) -> HttpResponse:
    """Check the dialog's form, run ``action(tenant, cleaned_data)``, and say how it went.

    ``done`` is the success message; ``{slug}`` in it is the tenant's slug.
    """
    tenant = get_tenant_for_user(request, slug, write=True)
    form = form_class(request.POST, tenant=tenant)
    if not form.is_valid():
        problems = "; ".join(e for errors in form.errors.values() for e in errors)
        return _finish(request, tenant, messages.ERROR, problems)
    try:
        action(tenant, form.cleaned_data)
    except actions.AlreadyUnderWay as exc:
        # A second click, or another operator got there first: not an error.
        return _finish(request, tenant, messages.INFO, str(exc))
    except actions.ActionError as exc:
        return _finish(request, tenant, messages.ERROR, str(exc))
    return _finish(request, tenant, messages.SUCCESS, done.format(slug=tenant.slug))


@login_required
@require_POST
def tenant_cancel(request: HttpRequest, slug: str) -> HttpResponse:
    return _act(
        request,
        slug,
        ActionForm,
        lambda tenant, data: actions.request_cancel(
            tenant, user=request.user, reason=data["reason"]
        ),
        "Cancel requested: {slug} stops at its next check and undoes its steps.",
    )


@login_required
@require_POST
def tenant_reset(request: HttpRequest, slug: str) -> HttpResponse:
    return _act(
        request,
        slug,
        ActionForm,
        lambda tenant, data: actions.reset_provisioning(
            tenant, user=request.user, reason=data["reason"]
        ),
        "{slug} is reset: the next retry starts from the first step.",
    )


@login_required
@require_POST
def tenant_retry(request: HttpRequest, slug: str) -> HttpResponse:
    return _act(
        request,
        slug,
        RetryForm,
        lambda tenant, data: actions.retry_provisioning(
            tenant, user=request.user, force=data["force"], reason=data["reason"]
        ),
        "Retrying {slug}: a new attempt is under way.",
    )


@login_required
@require_POST
def tenant_decommission(request: HttpRequest, slug: str) -> HttpResponse:
    return _act(
        request,
        slug,
        DecommissionForm,
        lambda tenant, data: actions.decommission_tenant(
            tenant, user=request.user, reason=data["reason"]
        ),
        "Decommissioning {slug}: its resources are being removed.",
    )


@login_required
@require_POST
def tenant_repair(request: HttpRequest, slug: str) -> HttpResponse:
    return _act(
        request,
        slug,
        RepairForm,
        lambda tenant, data: actions.repair_tenant(
            tenant, user=request.user, reason=data["reason"], source="operator"
        ),
        "{slug} is repaired: see its events for what was done.",
    )


@login_required
@require_POST
def dismiss_failure_view(request: HttpRequest, run_id: int) -> HttpResponse:
    """Hide the banner for this failed run, for this user, in every tab."""
    run = get_object_or_404(ProvisioningRun, pk=run_id, created_by=request.user)
    dismiss_failure(request.user, run)
    if request.htmx:
        return HttpResponse(fragments.banner_fragment(request.user))
    return redirect("tenant-list")
