from django.utils import timezone

from provisioning.audit import record_event
from provisioning.errors import PermanentError, TransientError
from provisioning.models import Route
from provisioning.steps.base import Step
from provisioning.traffic.follow import follow_current
from provisioning.traffic.verify import verify_tenant
from tenants.models import Tenant

# How long one attempt keeps re-checking the tenant's URL before it gives the
# engine a TransientError (which retries within the step's budget).
VERIFY_SECONDS = 10.0
VERIFY_POLL = 0.5


class MarkActive(Step):
    id = "mark_active"
    label = "Mark active"
    seconds = 30

    def run(self, ctx) -> dict:
        """One check of the tenant's URL; parks the run until the next while it does not serve."""
        # The route names the replicas running now (Swarm may have moved one
        # since wait_ready).
        moved = follow_current(ctx.tenant, ctx.driver, ctx.plan.replicas)
        if moved:
            ctx.log(f"route follows the replicas now running: {', '.join(moved)}")
        route = Route.objects.filter(tenant=ctx.tenant).first()
        if route is None or not route.backends:
            raise PermanentError("the tenant has no route with backends", category="unknown")
        memo = ctx.memo
        if "checks" not in memo:
            ctx.log(f"route {route.hostname} -> {', '.join(route.backends)}")
            # How long this attempt keeps checking, fixed at its first check.
            memo["give_up_s"] = min(VERIFY_SECONDS, max(ctx.time_left(), 1.0))
        # The step succeeds only once the tenant's URL serves the tenant's page.
        ctx.check_cancel()
        result = verify_tenant(ctx.tenant)
        checks = memo["checks"] = memo.get("checks", 0) + 1
        ctx.log(result.line(), "info" if result.ok else "warning")
        if result.ok:
            return {
                "url": ctx.tenant.url,
                "backends": route.backends,
                "verified": True,
                "verify_ms": result.ms,
                "verify_status": result.status,
                "verify_checks": checks,
            }
        if ctx.elapsed() >= memo["give_up_s"]:
            raise TransientError(
                f"{ctx.tenant.url} did not serve the tenant's page after {checks} "
                f"check(s): {result.status or 'no answer'}, {result.detail}",
                category="traffic",
            )
        raise ctx.check_again(
            VERIFY_POLL,
            message=f"{ctx.tenant.url}: {result.status or 'no answer'} ({checks} check(s))",
            reason=f"waiting for {ctx.tenant.url} to serve the tenant's page",
        )

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
