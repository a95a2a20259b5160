from provisioning.drivers.base import LABEL_MANAGED, LABEL_TENANT, network_name
from provisioning.models import Route
from provisioning.steps.base import Step


class AllocateNetwork(Step):
    id = "allocate_network"
    label = "Allocate traffic boundary"
    seconds = 30

    def run(self, ctx) -> dict:
        tenant = ctx.tenant
        network = ctx.driver.ensure_network(
            tenant.key, {LABEL_MANAGED: "true", LABEL_TENANT: str(tenant.pk)}
        )
        ctx.log(
            f"network {network.name} ({network.ref[:12]}) ready on the {ctx.driver.name} driver"
        )
        route, created = Route.objects.get_or_create(
            tenant=tenant, defaults={"hostname": tenant.hostname, "network": network.name}
        )
        ctx.log(f"{'created' if created else 'found'} route {route.hostname} (switched off)")
        return {"network": network.name, "route_id": route.pk, "hostname": route.hostname}

    def compensate(self, ctx) -> None:
        deleted, _ = Route.objects.filter(tenant=ctx.tenant).delete()
        ctx.log("removed route" if deleted else "route already gone")
        removed = ctx.driver.remove_network(ctx.tenant.key)
        ctx.log(
            f"removed network {network_name(ctx.tenant.key)}" if removed else "network already gone"
        )

    def verify(self, ctx, outputs) -> bool:
        return (
            Route.objects.filter(tenant=ctx.tenant).exists()
            and ctx.driver.find_network(ctx.tenant.key) is not None
        )
