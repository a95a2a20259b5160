from django.contrib import admin

from console.admin_base import ReadOnlyAdmin
from tenants.models import Plan, Tenant


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ("name", "display_name", "replicas", "memory_mb", "image", "sort_order")
    ordering = ("sort_order", "name")


@admin.register(Tenant)
class TenantAdmin(ReadOnlyAdmin):
    """Browsable, not editable: tenants change through the console's actions and
    the saga, which also name resources after the slug and write the audit log."""

    list_display = ("slug", "org", "plan", "state", "created_by", "created_at", "activated_at")
    list_filter = ("state", "plan")
    search_fields = ("slug", "org", "admin_email")
    date_hierarchy = "created_at"
    list_select_related = ("plan", "created_by")
    readonly_fields = (
        "slug",
        "org",
        "plan",
        "admin_email",
        "state",
        "created_by",
        "created_at",
        "updated_at",
        "activated_at",
        "decommissioned_at",
    )
