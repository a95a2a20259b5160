from provisioning.drivers.readiness import probe
from provisioning.errors import PermanentError, TransientError
from provisioning.repair import backends_of
from provisioning.steps.base import Step
from provisioning.steps.workloads import chip
from provisioning.traffic.follow import point_route, record_placement

# One check probes every replica not yet ready; the next check comes after
# POLL_SECONDS, doubling up to MAX_POLL_SECONDS, so a replica that answers at
# once is seen within ~50 ms and a ten-minute wait costs ~600 checks, not 12,000.
POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 1.0
# While a replica is not running yet (a swarm task being scheduled, pulled
# and started: 1-3 s), the next check comes at most this much later, so its
# start is seen within a quarter second rather than up to a second late.
STARTING_POLL_SECONDS = 0.25
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
        # A replica is ready once its current instance answered: a swarm task
        # that Swarm replaced (its ref changed) is probed again.
        seen = memo.get("refs", {})
        states = {
            r.name: memo.get("states", {}).get(r.name, "starting")
            if seen.get(r.name) == r.ref
            else "starting"
            for r in replicas
        }
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
        chips = [chip(r, states[r.name]) for r in replicas]
        message = f"{ready}/{len(replicas)} replicas ready"
        if ready == len(replicas):
            ctx.progress(message, 1.0, replicas=chips)
            # The route names the replicas that answered (swarm tasks publish
            # their ports only once they run).
            point_route(ctx.tenant, backends_of(replicas, plan.replicas))
            if ctx.driver.name == "swarm":
                record_placement(ctx.tenant, replicas)
            return {"ready": ready, "probes": probes}
        if ctx.time_left() <= 0:
            ctx.progress(message, ready / len(replicas), replicas=chips)
            raise TransientError(
                f"{ready}/{len(replicas)} replicas ready after {ctx.elapsed():.0f}s "
                f"({probes} probes)",
                category="readiness_timeout",
            )
        checks = memo.get("checks", 0) + 1
        memo.update(
            states=states, probes=probes, checks=checks, refs={r.name: r.ref for r in replicas}
        )
        longest = MAX_POLL_SECONDS
        if any(r.state != "running" for r in replicas):
            longest = STARTING_POLL_SECONDS
        wait = min(POLL_SECONDS * 2 ** (checks - 1), longest, max(ctx.time_left(), 0.0))
        raise ctx.check_again(
            wait,
            message=message,
            fraction=ready / len(replicas),
            replicas=chips,
            reason=f"waiting for replicas to answer /healthz ({message})",
        )
