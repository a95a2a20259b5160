from django.core.exceptions import ValidationError

from provisioning.errors import PermanentError
from provisioning.steps.base import Step
from tenants.validation import first_error, validate_request


class Validate(Step):
    creates = False
    id = "validate"
    label = "Validate request"
    attempts = 2
    seconds = 10

    def run(self, ctx) -> dict:
        tenant = ctx.tenant
        try:
            validate_request(
                tenant.slug,
                tenant.org,
                tenant.plan,
                tenant.admin_email,
                user=ctx.run.created_by,
                exclude_tenant_id=tenant.pk,
            )
        except ValidationError as exc:
            raise PermanentError(first_error(exc), category="validation") from None
        ctx.log(f"slug {tenant.slug!r} is free, plan {tenant.plan.name!r} exists")
        return {"slug": tenant.slug, "plan": tenant.plan.name}
