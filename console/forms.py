"""The create form and the small forms behind the action dialogs."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from provisioning import faults as fault_specs
from tenants.models import Plan, Tenant
from tenants.validation import REASON_MAX, validate_request


class PlanChoiceField(forms.ChoiceField):
    """Plans by name, each labelled with what it deploys."""

    widget = forms.RadioSelect

    def valid_value(self, value) -> bool:
        # ``validate_request`` names the plans that exist; one message, not two.
        return True


def plan_choices() -> list[tuple[str, str]]:
    return [
        (
            plan.name,
            f"{plan.display_name} — {plan.replicas} replica{'s' if plan.replicas != 1 else ''}, "
            f"{plan.memory_mb} MB each",
        )
        for plan in Plan.objects.order_by("sort_order", "name")
    ]


class TenantForm(forms.Form):
    """Only shapes the input: every rule lives in ``validate_request``.

    The fields are not ``required`` on the Django side, so an empty field gets
    the same message the command line and the saga's validate step give.
    """

    slug = forms.CharField(
        required=False,
        max_length=200,
        help_text="3 to 30 of a-z, 0-9 and '-'; the tenant's name in URLs and resources.",
    )
    org = forms.CharField(
        label="Organization",
        required=False,
        max_length=200,
        help_text="Same rules as the slug. The tenant lives at http://<slug>-<org>.<domain>/.",
    )
    plan = PlanChoiceField(required=False, choices=())
    admin_email = forms.CharField(
        label="First admin's email",
        required=False,
        max_length=254,
        help_text="Receives the welcome email and a one-time sign-in link.",
    )

    # Only where PROVISIONING_FAULTS_ENABLED=1 (demonstrations and tests).
    faults = forms.CharField(
        label="Inject faults",
        required=False,
        max_length=200,
        help_text="Demonstrations only: STEP:KIND[:N], comma-separated, "
        "e.g. deploy_workloads:hang:30.",
    )

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.injected: list[dict] = []
        if not settings.PROVISIONING_FAULTS_ENABLED:
            del self.fields["faults"]
        self.fields["plan"].choices = plan_choices()
        if not self.is_bound and self.fields["plan"].choices:
            self.initial.setdefault("plan", self.fields["plan"].choices[0][0])
        attrs = {"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"}
        for name in ("slug", "org"):
            self.fields[name].widget.attrs.update(attrs, required=True, maxlength=30)
        self.fields["admin_email"].widget.input_type = "email"
        self.fields["admin_email"].widget.attrs.update(required=True, autocomplete="email")

    def full_clean(self):
        super().full_clean()
        # Screen readers read a field's error with the field, before its help.
        for name in self.errors:
            if name in self.fields:
                described = [f"id_{name}_error"]
                if self.fields[name].help_text:
                    described.append(f"id_{name}_helptext")
                self.fields[name].widget.attrs["aria-describedby"] = " ".join(described)

    def clean_faults(self) -> str:
        specs = [spec.strip() for spec in self.cleaned_data["faults"].split(",") if spec.strip()]
        try:
            self.injected = [fault_specs.parse(spec) for spec in specs]
        except (ValueError, fault_specs.FaultsDisabled) as exc:
            raise ValidationError(str(exc)) from None
        return ", ".join(specs)

    def clean(self):
        data = super().clean()
        try:
            self.request = validate_request(
                data.get("slug", ""),
                data.get("org", ""),
                data.get("plan", ""),
                data.get("admin_email", ""),
                user=self.user,
            )
        except ValidationError as exc:
            self.add_validation_error(exc)
        return data

    def add_validation_error(self, exc: ValidationError) -> None:
        """Put ``validate_request``'s errors on their fields (``__all__`` on the form)."""
        if hasattr(exc, "error_dict"):
            for field, errors in exc.error_dict.items():
                name = field if field in self.fields else None
                for error in errors:
                    self.add_error(name, error)
        else:
            self.add_error(None, exc)


class ActionForm(forms.Form):
    """An action dialog: an optional reason for the audit log, about ``tenant``."""

    reason = forms.CharField(required=False, max_length=REASON_MAX, strip=True)

    def __init__(self, *args, tenant: Tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant = tenant


class RetryForm(ActionForm):
    # Past the failed-attempts limit the dialog asks to confirm "retry anyway";
    # the action itself refuses a retry past it without ``force``.
    force = forms.BooleanField(required=False)


class RepairForm(ActionForm):
    """Repair is confirmed with a reason: it acts on a serving tenant."""

    reason = forms.CharField(
        max_length=REASON_MAX,
        strip=True,
        error_messages={"required": "Say why you repair this tenant; nothing was changed."},
    )


class DecommissionForm(ActionForm):
    confirm_slug = forms.CharField(required=False, max_length=60, strip=True)

    def clean(self):
        data = super().clean()
        if not self.errors and data["confirm_slug"] != self.tenant.slug:
            raise ValidationError(
                f"Type the slug {self.tenant.slug} exactly to decommission it; nothing was changed."
            )
        return data
