from provisioning.drivers.base import LABEL_FENCE, LABEL_RUN, LABEL_TENANT
from provisioning.models import Route
from provisioning.repair import excluding_repairs
from provisioning.steps.base import Step


def chip(replica, state: str) -> dict:
    """A replica as the pages' chips show it: name, state, and the swarm node running it."""
    shown = {"name": replica.name, "state": state}
    if replica.node:
        shown["node"] = replica.node
    return shown


class DeployWorkloads(Step):
    id = "deploy_workloads"
    label = "Deploy workloads"
    seconds = 90

    def run(self, ctx) -> dict:
        tenant, plan, driver = ctx.tenant, ctx.plan, ctx.driver
        ctx.progress("Preparing image", 0.05)
        driver.ensure_image(plan.image)
        ctx.progress(f"Starting {plan.replicas} replica(s)", 0.2)
        replicas = driver.ensure_replicas(
            tenant.key,
            image=plan.image,
            count=plan.replicas,
            memory_mb=plan.memory_mb,
            pids_limit=plan.pids_limit,
            labels={
                LABEL_TENANT: str(tenant.pk),
                LABEL_RUN: str(ctx.run.pk),
                LABEL_FENCE: str(ctx.run.fence),
            },
            env={"TENANT_SLUG": tenant.slug, "TENANT_ORG": tenant.org},
            log=ctx.log,
        )
        # A swarm task publishes its port only once it runs: wait_ready and
        # mark_active point the route at the tasks that answer.
        backends = [f"{r.host}:{r.port}" for r in replicas if r.port]
        Route.objects.filter(tenant=tenant).update(backends=backends)
        ctx.progress(
            f"{len(replicas)}/{plan.replicas} replicas started",
            1.0,
            replicas=[chip(r, r.state) for r in replicas],
        )
        return {
            "driver": driver.name,
            "replicas": [
                {"name": r.name, "ref": r.ref[:12], "port": r.port, "node": r.node}
                for r in replicas
            ],
        }

    def compensate(self, ctx) -> None:
        with excluding_repairs(ctx.tenant):
            removed = ctx.driver.remove_replicas(ctx.tenant.key)
        Route.objects.filter(tenant=ctx.tenant).update(backends=[])
        ctx.log(f"removed {removed} replica(s)" if removed else "replicas already gone")

    def verify(self, ctx, outputs) -> bool:
        running = [r for r in ctx.driver.list_replicas(ctx.tenant.key) if r.state == "running"]
        return len(running) >= ctx.plan.replicas
