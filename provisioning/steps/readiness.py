from provisioning.drivers.readiness import probe
from provisioning.errors import PermanentError, TransientError
from provisioning.steps.base import Step

# One check probes every replica not yet ready; the next check comes after
# POLL_SECONDS, doubling up to MAX_POLL_SECONDS, so a replica that answers at
# once is seen within ~50 ms and a ten-minute wait costs ~600 checks, not 12,000.
POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 1.0
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
        """One check of every replica; parks the run until the next one while any is starting."""
        tenant, plan = ctx.tenant, ctx.plan
        replicas = sorted(ctx.driver.list_replicas(tenant.key), key=lambda r: r.index)
        if len(replicas) < plan.replicas:
            raise PermanentError(
                f"{len(replicas)} of {plan.replicas} replicas exist; "
                "deploy_workloads must run first",
                category="readiness_timeout",
            )
        memo = ctx.memo
        states = {r.name: memo.get("states", {}).get(r.name, "starting") for r in replicas}
        probes = memo.get("probes", 0)
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
        chips = [{"name": n, "state": s} for n, s in states.items()]
        message = f"{ready}/{len(replicas)} replicas ready"
        if ready == len(replicas):
            ctx.progress(message, 1.0, replicas=chips)
            return {"ready": ready, "probes": probes}
        if ctx.time_left() <= 0:
            ctx.progress(message, ready / len(replicas), replicas=chips)
            raise TransientError(
                f"{ready}/{len(replicas)} replicas ready after {ctx.elapsed():.0f}s "
                f"({probes} probes)",
                category="readiness_timeout",
            )
        checks = memo.get("checks", 0) + 1
        memo.update(states=states, probes=probes, checks=checks)
        wait = min(POLL_SECONDS * 2 ** (checks - 1), MAX_POLL_SECONDS, max(ctx.time_left(), 0.0))
        raise ctx.check_again(
            wait,
            message=message,
            fraction=ready / len(replicas),
            replicas=chips,
            reason=f"waiting for replicas to answer /healthz ({message})",
        )
