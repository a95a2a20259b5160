from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q


class Plan(models.Model):
    """What a tenant gets: its workload image, replicas and step budgets."""

    name = models.SlugField(max_length=30, unique=True)
    display_name = models.CharField(max_length=60)
    description = models.CharField(max_length=200, blank=True)
    image = models.CharField(max_length=200)
    replicas = models.PositiveSmallIntegerField()
    memory_mb = models.PositiveIntegerField(default=64)
    # Processes (and threads) one replica may run at once: a fork bomb in a
    # tenant's workload stops there instead of exhausting the host's pids.
    pids_limit = models.PositiveIntegerField(default=64, validators=[MinValueValidator(1)])
    # {"<step id>": {"attempts": int, "seconds": float}}; steps not named use
    # their own defaults. Larger plans get more time to become ready.
    step_budgets = models.JSONField(default=dict, blank=True)
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "name"]

    def __str__(self) -> str:
        return self.name


STATES = ["provisioning", "active", "failed", "decommissioning", "decommissioned"]


class TenantQuerySet(models.QuerySet):
    def lock(self, **lookup) -> Tenant:
        """Lock one tenant's row for a change to it or to any of its runs.

        The lock order is the tenant, then its run: operator actions, the
        worker's fenced writes and reconcile all start here, so a cancel and
        a step finishing at the same moment queue up instead of deadlocking.
        NO KEY UPDATE, because nothing changes a tenant's key: other
        transactions may still insert rows that reference it (audit events).
        """
        locking = self.select_for_update(no_key=True, of=("self",))
        return locking.select_related("plan").get(**lookup)


class Tenant(models.Model):
    class State(models.TextChoices):
        PROVISIONING = "provisioning", "Provisioning"
        ACTIVE = "active", "Active"
        FAILED = "failed", "Failed"
        DECOMMISSIONING = "decommissioning", "Decommissioning"
        DECOMMISSIONED = "decommissioned", "Decommissioned"

    slug = models.CharField(max_length=30)
    org = models.CharField(max_length=30)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tenants")
    admin_email = models.EmailField()
    state = models.CharField(max_length=20, choices=State.choices, default=State.PROVISIONING)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    decommissioned_at = models.DateTimeField(null=True, blank=True)
    # The workload driver ("docker", "process", ...) that holds this tenant's
    # network and replicas, recorded when its first run first needed one
    # (provisioning.drivers.driver_for); everything later uses that one.
    workload_driver = models.CharField(max_length=20, blank=True, default="")

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # A slug names one live tenant; decommissioning frees it for reuse.
            models.UniqueConstraint(
                fields=["slug"],
                condition=~Q(state="decommissioned"),
                name="tenant_slug_unique_while_live",
            ),
            models.CheckConstraint(condition=Q(state__in=STATES), name="tenant_state_valid"),
        ]
        indexes = [models.Index(fields=["state", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.slug}-{self.org}"

    @property
    def key(self) -> str:
        """Deterministic name stem for everything created for this tenant.

        RESOURCE_NAMESPACE keeps two installations (or a test run and a dev
        console) sharing one Docker Engine apart, since tenant ids repeat.
        """
        return f"{settings.RESOURCE_NAMESPACE}t{self.pk}-{self.slug}"

    @property
    def hostname(self) -> str:
        return f"{self.slug}-{self.org}.{settings.BASE_DOMAIN}"

    @property
    def url(self) -> str:
        return f"http://{self.hostname}/"

    @property
    def schema_name(self) -> str:
        # Safe by construction: slugs are [a-z0-9-]; the id keeps re-used slugs apart.
        return f"t{self.pk}_{self.slug.replace('-', '_')}"
