from django.utils import timezone

from provisioning.audit import record_event
from provisioning.errors import PermanentError
from provisioning.models import Route
from provisioning.steps.base import Step
from tenants.models import Tenant


class MarkActive(Step):
    id = "mark_active"
    label = "Mark active"
    seconds = 30

    def run(self, ctx) -> dict:
        route = Route.objects.filter(tenant=ctx.tenant).first()
        if route is None or not route.backends:
            raise PermanentError("the tenant has no route with backends", category="unknown")
        ctx.log(f"route {route.hostname} -> {', '.join(route.backends)}")
        return {"url": ctx.tenant.url, "backends": route.backends}

    def on_success(self, ctx, outputs) -> None:
        # Inside the fenced transaction that records the step's success: the
        # route, the tenant's state and the event commit together or not at all.
        Route.objects.filter(tenant=ctx.tenant).update(enabled=True)
        now = timezone.now()
        Tenant.objects.filter(pk=ctx.tenant.pk).update(
            state=Tenant.State.ACTIVE, activated_at=now, updated_at=now
        )
        ctx.tenant.state, ctx.tenant.activated_at = Tenant.State.ACTIVE, now
        record_event(
            "tenant.provisioning.completed",
            tenant=ctx.tenant,
            run=ctx.run,
            details={"message": "Tenant activated", "url": ctx.tenant.url},
        )

    def compensate(self, ctx) -> None:
        switched = Route.objects.filter(tenant=ctx.tenant, enabled=True).update(enabled=False)
        ctx.log("route switched off" if switched else "route already off")
