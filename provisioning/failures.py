"""The signed-in user's recent failed attempts, for the "Last attempt failed" banner.

One query serves the JSON API (``/api/provisioning/recent-failures``) and the
banner on the tenants list (page load and websocket pushes), so both show the
same failure.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import F, OuterRef, QuerySet, Subquery
from django.urls import reverse
from django.utils import timezone

from provisioning.audit import announce
from provisioning.errors import CATEGORIES
from provisioning.models import BannerDismissal, ProvisioningRun
from provisioning.status import iso
from provisioning.steps import BY_ID, position_of

log = logging.getLogger("provisioning.failures")

DEFAULT_HOURS, MAX_HOURS = 24, 168
DEFAULT_LIMIT, MAX_LIMIT = 1, 20


def failed_runs(user, since) -> QuerySet[ProvisioningRun]:
    """Provisioning attempts ``user`` started that failed since ``since``, newest first.

    Only a run that is still its tenant's latest counts: once a retry (or a
    decommission) followed, "last attempt failed" is no longer true. A cancel
    is the operator's own doing, not a failure to warn about.
    """
    latest = (
        ProvisioningRun.objects.filter(tenant=OuterRef("tenant"))
        .order_by("-created_at", "-id")
        .values("pk")[:1]
    )
    return (
        ProvisioningRun.objects.filter(
            created_by=user,
            kind=ProvisioningRun.Kind.PROVISION,
            status=ProvisioningRun.Status.FAILED,
            cancelled=False,
            finished_at__gte=since,
        )
        .annotate(latest_id=Subquery(latest))
        .filter(pk=F("latest_id"))
        .select_related("tenant")
        .order_by("-finished_at", "-id")
    )


def failure_json(run: ProvisioningRun, dismissed: bool) -> dict:
    category = run.error_category or "unknown"
    title, next_action = CATEGORIES.get(category, CATEGORIES["unknown"])
    step = BY_ID.get(run.failed_step)
    return {
        "run": run.pk,
        "tenant": run.tenant.slug,
        "org": run.tenant.org,
        "attempt": run.attempt,
        "failed_step": run.failed_step or None,
        "step_label": step.label if step else None,
        "step_position": position_of(step.id) if step else None,
        "error": run.error or None,
        "category": category,
        "category_title": title,
        "next_action": next_action,
        "finished_at": iso(run.finished_at),
        "url": reverse("tenant-detail", args=[run.tenant.slug]),
        "dismissed": dismissed,
    }


def recent_failures(
    user, *, hours: int = DEFAULT_HOURS, limit: int = DEFAULT_LIMIT
) -> tuple[list[dict], bool]:
    """(failures, degraded). A failing query degrades to no failures, never an error.

    The banner is a convenience: a database hiccup must not take the tenants
    list (or the API) down with it.
    """
    since = timezone.now() - timedelta(hours=hours)
    try:
        runs = list(failed_runs(user, since)[:limit])
        dismissed = set(
            BannerDismissal.objects.filter(user=user, run__in=runs).values_list("run_id", flat=True)
        )
        return [failure_json(run, run.pk in dismissed) for run in runs], False
    except Exception:
        log.exception("recent failures for user %s: query failed", getattr(user, "pk", None))
        return [], True


def dismiss_failure(user, run: ProvisioningRun) -> bool:
    """Record that ``user`` dismissed the banner for ``run``; tell the user's tabs.

    The announcement goes out inside the transaction, so tabs hear of it only
    once the dismissal is stored. Returns False when it was already dismissed.
    """
    with transaction.atomic():
        _, created = BannerDismissal.objects.get_or_create(user=user, run=run)
        announce([f"user-{user.pk}"])
    return created
