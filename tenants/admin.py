from django import forms
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from provisioning.steps import validate_step_budgets
from provisioning.steps.base import InvalidBudgets
from tenants.admin_base import ReadOnlyAdmin
from tenants.models import Plan, Tenant


class PlanForm(forms.ModelForm):
    # No Meta: the admin builds it from PlanAdmin's fields (modelform_factory).

    def clean_step_budgets(self):
        """The engine's own check: a plan saved here never stops a run on a bad budget."""
        value = self.cleaned_data["step_budgets"]
        try:
            validate_step_budgets(value)
        except InvalidBudgets as exc:
            raise forms.ValidationError(exc.problems, code="invalid_budgets") from exc
        return value or {}  # an emptied field means "the steps' defaults", not JSON null


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    form = PlanForm
    list_display = (
        "name",
        "display_name",
        "replicas",
        "memory_mb",
        "pids_limit",
        "image",
        "sort_order",
    )
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
        "same_slug_history",
    )

    @admin.display(description="Same slug, other tenants")
    def same_slug_history(self, obj: Tenant) -> str:
        """Successive provisioning of one slug: every other tenant that held it."""
        others = (
            Tenant.objects.filter(slug=obj.slug).exclude(pk=obj.pk).order_by("created_at", "id")
        )
        if not others:
            return "None: this is the only tenant that has held this slug."
        rows = format_html_join(
            "",
            '<li><a href="{}">#{} {}-{}</a>: {} {}, created {}{}</li>',
            (
                (
                    reverse("admin:tenants_tenant_change", args=[other.pk]),
                    other.pk,
                    other.slug,
                    other.org,
                    "before this one" if other.created_at < obj.created_at else "after this one",
                    other.state,
                    f"{other.created_at:%Y-%m-%d %H:%M}",
                    f", decommissioned {other.decommissioned_at:%Y-%m-%d %H:%M}"
                    if other.decommissioned_at
                    else "",
                )
                for other in others
            ),
        )
        return format_html('<ul class="same-slug">{}</ul>', rows)
