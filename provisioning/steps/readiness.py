from provisioning.drivers.readiness import probe
from provisioning.errors import PermanentError, TransientError
from provisioning.steps.base import Step

POLL_SECONDS = 0.05
# Every probe is logged until this many lines, then only changes of state, so
# a long wait does not bury the log.
VERBOSE_PROBES = 60


class WaitReady(Step):
    creates = False
    id = "wait_ready"
    label = "Wait for workloads ready"
    attempts = 2
    seconds = 30

    def run(self, ctx) -> dict:
        tenant, plan = ctx.tenant, ctx.plan
        replicas = sorted(ctx.driver.list_replicas(tenant.key), key=lambda r: r.index)
        if len(replicas) < plan.replicas:
            raise PermanentError(
                f"{len(replicas)} of {plan.replicas} replicas exist; "
                "deploy_workloads must run first",
                category="readiness_timeout",
            )
        states = {r.name: "starting" for r in replicas}
        probes = 0
        while True:
            ctx.check_cancel()
            for replica in replicas:
                if states[replica.name] == "ready":
                    continue
                ok, answer = probe(replica, timeout=1.0)
                probes += 1
                new_state = "ready" if ok else "starting"
                if probes <= VERBOSE_PROBES or new_state != states[replica.name]:
                    ctx.log(f"probe {replica.name} {replica.base_url}/healthz -> {answer}")
                states[replica.name] = new_state
            ready = sum(1 for s in states.values() if s == "ready")
            ctx.progress(
                f"{ready}/{len(replicas)} replicas ready",
                ready / len(replicas),
                replicas=[{"name": n, "state": s} for n, s in states.items()],
            )
            if ready == len(replicas):
                return {"ready": ready, "probes": probes}
            if ctx.time_left() <= 0:
                raise TransientError(
                    f"{ready}/{len(replicas)} replicas ready after {ctx.elapsed():.0f}s "
                    f"({probes} probes)",
                    category="readiness_timeout",
                )
            ctx.sleep(POLL_SECONDS)
