from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from tenants.models import Tenant


class ProvisioningRun(models.Model):
    """One attempt at provisioning (or decommissioning) a tenant."""

    class Kind(models.TextChoices):
        PROVISION = "provision", "Provision"
        DECOMMISSION = "decommission", "Decommission"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        COMPENSATING = "compensating", "Compensating"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    LIVE = (Status.QUEUED, Status.RUNNING, Status.COMPENSATING)

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="runs")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.PROVISION)
    attempt = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    # The lease: who advances this run, until when. `fence` goes up on every
    # claim, reset and cancel hand-over, and every write from a worker names
    # the fence it holds, so a worker that lost its lease cannot write.
    lease_owner = models.CharField(max_length=120, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    fence = models.PositiveBigIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancelled = models.BooleanField(default=False)
    faults = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    failed_step = models.CharField(max_length=40, blank=True)
    error = models.TextField(blank=True)
    error_category = models.CharField(max_length=40, blank=True)
    reset_at = models.DateTimeField(null=True, blank=True)
    # Claims that picked the run up again after a worker stopped advancing it
    # (a crash, an unexpected exception); past PROVISIONING_MAX_RESUMES it fails.
    resumes = models.PositiveIntegerField(default=0)
    # Parked: no worker holds the run (no lease) until ``wake_at``, when any
    # worker's pump claims it again (engine.pump); ``wait_reason`` says why,
    # for the pages and commands. A claim clears both.
    wake_at = models.DateTimeField(null=True, blank=True)
    wait_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "kind", "attempt"], name="run_attempt_unique_per_kind"
            ),
            # At most one run per tenant is in flight, whatever its kind.
            models.UniqueConstraint(
                fields=["tenant"],
                condition=Q(status__in=["queued", "running", "compensating"]),
                name="one_live_run_per_tenant",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "lease_expires_at"]),
            # The pumps' "what is due next" (engine.pump): parked runs only.
            models.Index(
                fields=["wake_at"], name="run_parked_wake_at", condition=Q(wake_at__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.kind} #{self.attempt}"

    @property
    def is_live(self) -> bool:
        return self.status in self.LIVE

    @property
    def is_parked(self) -> bool:
        """Waiting durably for ``wake_at``: live, no worker holds it."""
        return self.is_live and self.wake_at is not None and not self.lease_owner


def latest_run(tenant: Tenant, kind: str | None = None) -> ProvisioningRun | None:
    """The tenant's most recent run (of ``kind``, if given): what pages and actions act on."""
    runs = tenant.runs.all()
    if kind:
        runs = runs.filter(kind=kind)
    return runs.order_by("-created_at", "-id").first()


class StepRun(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        RETRYING = "retrying", "Retrying"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        COMPENSATING = "compensating", "Compensating"
        COMPENSATED = "compensated", "Compensated"
        SKIPPED = "skipped", "Skipped"

    run = models.ForeignKey(ProvisioningRun, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField()
    step_id = models.CharField(max_length=40)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_category = models.CharField(max_length=40, blank=True)
    outputs = models.JSONField(default=dict, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    # Set once, by the worker's heartbeat, when the step ran well past its
    # expected duration: the marker that keeps `tenant.provisioning.stalled`
    # to one event per step run.
    stalled_at = models.DateTimeField(null=True, blank=True)
    # The current attempt's start: its time budget runs from here across the
    # parks between its checks (StepContext.time_left).
    attempt_started_at = models.DateTimeField(null=True, blank=True)
    # What a waiting step keeps between its checks (probe states, counts, an
    # injected hang's end); cleared when an attempt starts.
    memo = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "position"], name="step_position_unique_per_run")
        ]

    def __str__(self) -> str:
        return f"{self.run} {self.position}:{self.step_id} {self.status}"

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return round((self.finished_at - self.started_at).total_seconds(), 3)
        return None


class StepLogLine(models.Model):
    """What a step did, line by line, for operators to read."""

    step = models.ForeignKey(StepRun, on_delete=models.CASCADE, related_name="log_lines")
    at = models.DateTimeField(auto_now_add=True)
    level = models.CharField(max_length=10, default="info")
    message = models.TextField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.message[:80]


class AuditEvent(models.Model):
    """Append-only record of every state change (a trigger refuses UPDATE and DELETE)."""

    seq = models.BigAutoField(primary_key=True)
    type = models.CharField(max_length=80, db_index=True)
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    run = models.ForeignKey(
        ProvisioningRun, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    # A name, not a foreign key, so deleting a user never rewrites history.
    actor = models.CharField(max_length=150, default="system")
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-seq"]
        indexes = [models.Index(fields=["tenant", "-seq"])]

    def __str__(self) -> str:
        return f"#{self.seq} {self.type}"


class TenantIdentity(models.Model):
    """The tenant's organization and first admin (allocate_identity)."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="identity")
    organization = models.CharField(max_length=60)
    admin_email = models.EmailField()
    # The sign-in token is HMAC(SECRET_KEY, nonce); only its hash is stored,
    # so the database alone cannot sign anybody in.
    token_nonce = models.CharField(max_length=64)
    token_hash = models.CharField(max_length=64)
    token_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.organization} ({self.admin_email})"


def _routes_changed() -> None:
    # The edge's routes file follows every committed change to routes
    # (imported here, not at the top: the traffic package imports models).
    from provisioning.traffic import export

    export.schedule_write()


class RouteQuerySet(models.QuerySet):
    """Queryset updates and deletes send no signals, so the queryset itself
    is the one place every change to routes passes through."""

    def update(self, **kwargs):
        changed = super().update(**kwargs)
        if changed:
            _routes_changed()
        return changed

    def delete(self):
        deleted = super().delete()
        if deleted[0]:
            _routes_changed()
        return deleted


class Route(models.Model):
    """Where the tenant's hostname sends traffic (allocate_network, mark_active)."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="route")
    hostname = models.CharField(max_length=255)
    network = models.CharField(max_length=120, blank=True)
    backends = models.JSONField(default=list, blank=True)  # ["127.0.0.1:49153", ...]
    enabled = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RouteQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.hostname} -> {', '.join(self.backends) or 'nothing'}"

    def save(self, *args, **kwargs) -> None:
        super().save(*args, **kwargs)
        _routes_changed()

    def delete(self, *args, **kwargs):
        deleted = super().delete(*args, **kwargs)
        _routes_changed()
        return deleted


class WelcomeEmail(models.Model):
    """One row per email kind, claimed before sending, so a retry never re-sends."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="welcome_emails")
    kind = models.CharField(max_length=20)
    to = models.EmailField()
    claimed_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "kind"], name="welcome_email_once")
        ]

    def __str__(self) -> str:
        return f"{self.kind} to {self.to}"


class BannerDismissal(models.Model):
    """A user said "seen it" to the "Last attempt failed" banner for one run.

    Stored server-side, not in the browser, so every tab and device of the
    user agrees; the dismiss view announces it on the user's topic.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="banner_dismissals"
    )
    run = models.ForeignKey(ProvisioningRun, on_delete=models.CASCADE, related_name="dismissals")
    dismissed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "run"], name="banner_dismissed_once")
        ]

    def __str__(self) -> str:
        return f"{self.user} dismissed {self.run}"


class ReconcileReport(models.Model):
    """What reconciliation found last (one row, pk 1): the list page's drift banner reads it."""

    checked_at = models.DateTimeField()
    findings = models.JSONField(default=list, blank=True)  # [{"id", "problem", "kind", ...}]
    errors = models.JSONField(default=list, blank=True)  # what could not be checked

    def __str__(self) -> str:
        return f"{len(self.findings)} finding(s) at {self.checked_at:%Y-%m-%d %H:%M:%S}"


class WorkloadHealth(models.Model):
    """What the repair loop last saw of a tenant's replicas (provisioning.repair), one row
    per tenant: the pages' Degraded badge and live replica chips read it."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="workload_health")
    expected = models.PositiveSmallIntegerField(default=0)  # the plan's replicas
    healthy = models.PositiveSmallIntegerField(default=0)  # running and answering /healthz
    # [{"name", "index", "state", "healthy", "failures", "answer"}], by index;
    # "failures" counts failed health checks in a row (replaced at repair.UNHEALTHY_CHECKS).
    replicas = models.JSONField(default=list, blank=True)
    error = models.CharField(max_length=500, blank=True)  # why the last check could not look
    checked_at = models.DateTimeField(null=True, blank=True)
    degraded_since = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.tenant}: {self.healthy}/{self.expected} healthy"

    @property
    def degraded(self) -> bool:
        """Fewer healthy replicas than the plan asks for (or none could be checked)."""
        return self.healthy < self.expected
