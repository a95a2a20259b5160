"""Admin for browsing the saga's records. The saga is their source of truth, so
nothing about a run's state can be edited here, and audit events not at all."""

from django.contrib import admin

from provisioning.models import (
    AuditEvent,
    BannerDismissal,
    ProvisioningRun,
    StepLogLine,
    StepRun,
)
from tenants.admin_base import ReadOnlyAdmin, ReadOnlyMixin


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("seq", "created_at", "type", "tenant", "actor", "run")
    list_filter = ("type", ("tenant", admin.RelatedOnlyFieldListFilter))
    date_hierarchy = "created_at"
    search_fields = ("type", "actor", "tenant__slug")
    list_select_related = ("tenant", "run", "run__tenant")
    ordering = ("-seq",)
    readonly_fields = ("seq", "type", "tenant", "run", "actor", "details", "created_at")


class StepRunInline(ReadOnlyMixin, admin.TabularInline):
    model = StepRun
    extra = 0
    ordering = ("position",)
    fields = (
        "position",
        "step_id",
        "status",
        "attempts",
        "started_at",
        "finished_at",
        "next_attempt_at",
        "stalled_at",
        "error_category",
        "error",
        "outputs",
        "progress",
    )
    readonly_fields = fields


@admin.register(ProvisioningRun)
class ProvisioningRunAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "tenant",
        "kind",
        "attempt",
        "status",
        "cancelled",
        "failed_step",
        "created_at",
        "finished_at",
    )
    list_filter = ("kind", "status", "cancelled", "error_category")
    search_fields = ("tenant__slug", "tenant__org", "failed_step", "error")
    list_select_related = ("tenant",)
    date_hierarchy = "created_at"
    inlines = [StepRunInline]


@admin.register(StepRun)
class StepRunAdmin(ReadOnlyAdmin):
    list_display = ("run", "position", "step_id", "status", "attempts", "started_at")
    list_filter = ("status", "step_id")
    search_fields = ("run__tenant__slug", "step_id", "error")
    list_select_related = ("run", "run__tenant")


@admin.register(StepLogLine)
class StepLogLineAdmin(ReadOnlyAdmin):
    list_display = ("at", "step", "level", "message")
    list_filter = ("level",)
    search_fields = ("message", "step__run__tenant__slug")
    list_select_related = ("step", "step__run", "step__run__tenant")


@admin.register(BannerDismissal)
class BannerDismissalAdmin(ReadOnlyAdmin):
    list_display = ("user", "run", "dismissed_at")
