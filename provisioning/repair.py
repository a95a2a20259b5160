"""Desired state: every active tenant runs its plan's replicas, and its route points at them.

    outcome = repair_tenant(tenant)   # one tenant, now (manage.py repair_tenant, Repair)
    repair_all()                      # the provisioning-repair schedules, every 30 s

One pass over a tenant looks at each replica 1..N of its plan on the
tenant's own driver (``driver_for``) and:

- recreates a replica that is missing (and the network, if that is gone);
- starts one that is stopped (``docker stop``, a crash the engine did not
  restart, a process replica whose process died);
- replaces one that is running but failed its health check (GET /healthz)
  ``UNHEALTHY_CHECKS`` passes in a row;
- removes replicas past the plan's count (the plan was changed);
- points the route at the replicas' current ports (an engine restart
  publishes them on new ones) and switches it on, and recreates it if gone.

Each repair is one ``tenant.workload.repaired`` audit event: what, why and
how long it took (until the replica answered /healthz). What the pass saw is
kept in ``WorkloadHealth``, written before the repairs (so the pages show
**Degraded** while they run) and after them.

A swarm tenant's replicas are Swarm's to restart and reschedule: for it a
pass only reports (state, node, health) and repairs what Swarm cannot, a
deleted service or network or a replica count that is not the plan's, and
the route (``provisioning.traffic.follow`` keeps routes on the current tasks
between passes).

A tenant is repaired only while it is active with no run in flight: a run's
steps (and a decommission's undo) own its workloads meanwhile. Two repairs
of one tenant never overlap (a PostgreSQL advisory lock, across hosts); the
second one skips. When the engine is unreachable the pass records that and
changes nothing: the engine starts the replicas itself when it comes back
(restart policy ``unless-stopped``), and the next pass follows their ports.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from provisioning.audit import announce, record_event
from provisioning.drivers import driver_for
from provisioning.drivers.base import (
    LABEL_MANAGED,
    LABEL_RUN,
    LABEL_TENANT,
    network_name,
    replica_name,
    service_name,
)
from provisioning.drivers.readiness import probe
from provisioning.errors import StepError, classify
from provisioning.models import ProvisioningRun, Route, WorkloadHealth, latest_run
from tenants.models import Tenant

logger = logging.getLogger(__name__)

UNHEALTHY_CHECKS = 3  # failed health checks in a row (one per pass) before a replacement
PROBE_TIMEOUT = 1.0  # seconds per health check
READY_SECONDS = 15.0  # how long a pass waits for a repaired replica to answer
# pg_try_advisory_lock(REPAIR_LOCK, tenant id): one repair per tenant at a time.
REPAIR_LOCK = 0x7270  # "rp"
REPLICA_ACTIONS = ("recreated", "restarted", "replaced")


@dataclass
class Repair:
    what: str  # e.g. "replica tpc-t7-acme-r2 recreated", "route updated"
    why: str
    seconds: float
    target: str = ""  # the replica, network or route repaired
    action: str = ""  # recreated, restarted, replaced, removed, updated, switched on
    # The route's backends after a replica's repair moved them (that is part of
    # the replica's repair, not a repair of its own).
    route: list[str] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Outcome:
    tenant: str
    expected: int = 0
    healthy: int = 0
    repairs: list[Repair] = field(default_factory=list)
    skipped: str = ""  # why the tenant was not looked at
    error: str = ""  # why it could not be repaired (the engine is unreachable, ...)
    outage: bool = False  # the error was the engine's (errors.EngineOutage)

    @property
    def degraded(self) -> bool:
        return not self.skipped and self.healthy < self.expected

    def as_dict(self) -> dict:
        return {
            "tenant": self.tenant,
            "expected": self.expected,
            "healthy": self.healthy,
            "degraded": self.degraded,
            "repairs": [r.as_dict() for r in self.repairs],
            "skipped": self.skipped,
            "error": self.error,
        }


def not_repairable(tenant: Tenant) -> str:
    """Why repair leaves ``tenant`` alone now, or "" when it may repair it."""
    if tenant.state != Tenant.State.ACTIVE:
        return f"{tenant.slug} is {tenant.state}; only active tenants are repaired"
    if ProvisioningRun.objects.filter(tenant=tenant, status__in=ProvisioningRun.LIVE).exists():
        return f"{tenant.slug} has a run in flight; its steps own the workloads until it ends"
    return ""


def repairable_tenants():
    live = ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE).values("tenant_id")
    return (
        Tenant.objects.filter(state=Tenant.State.ACTIVE)
        .exclude(pk__in=live)
        .select_related("plan")
        .order_by("pk")
    )


def repair_all() -> str:
    """One pass over every active tenant (the schedule); a summary line for the task log.

    Once a driver's engine is found unreachable, the pass does not ask it
    again for the other tenants on it (a hung engine costs a client timeout
    per call): they are recorded as not checked, for the same reason.
    """
    outcomes = []
    away: dict[str, str] = {}  # driver name -> the outage seen this pass
    for tenant in repairable_tenants():
        if tenant.workload_driver in away:
            outcome = Outcome(tenant=tenant.slug, expected=tenant.plan.replicas)
            outcome.error = away[tenant.workload_driver]
            _store(tenant, outcome, observed=None)
            outcomes.append(outcome)
            continue
        try:
            outcome = repair_tenant(tenant)
        except Exception:  # one tenant's bug must not stop the others' repairs
            logger.exception("repair of %s failed", tenant.slug)
            continue
        outcomes.append(outcome)
        if outcome.outage:
            away[tenant.workload_driver] = outcome.error
    repairs = sum(len(o.repairs) for o in outcomes)
    errors = [o for o in outcomes if o.error]
    text = f"{len(outcomes)} tenant(s) checked, {repairs} repair(s)"
    if errors:
        text += f", {len(errors)} not repaired ({errors[0].error[:120]})"
    return text


def repair_tenant(tenant: Tenant, *, actor=None, reason: str = "", source: str = "schedule"):
    """Bring one tenant to its desired state now; an Outcome says what was done."""
    outcome = Outcome(tenant=tenant.slug)
    if not _try_lock(tenant.pk):
        outcome.skipped = f"another repair of {tenant.slug} is under way"
        return outcome
    try:
        tenant = Tenant.objects.select_related("plan").get(pk=tenant.pk)
        outcome.skipped = not_repairable(tenant)
        if outcome.skipped:
            return outcome
        outcome.expected = tenant.plan.replicas
        try:
            _repair(tenant, outcome, actor=actor, reason=reason, source=source)
        except Exception as exc:
            error = classify(exc)
            outcome.error = f"{error.category}: {error}"[:500]
            outcome.outage = error.outage
            if not isinstance(exc, StepError):
                logger.warning("repair of %s: %s", tenant.slug, outcome.error)
            _store(tenant, outcome, observed=None)
        return outcome
    finally:
        _unlock(tenant.pk)


def _repair(tenant: Tenant, outcome: Outcome, *, actor, reason: str, source: str) -> None:
    driver = driver_for(tenant)
    if driver.name == "swarm":
        _repair_swarm(tenant, driver, outcome, actor=actor, reason=reason, source=source)
        return
    plan = tenant.plan
    count = plan.replicas
    key = tenant.key
    previous = WorkloadHealth.objects.filter(tenant=tenant).first()
    failures = {r["name"]: r.get("failures", 0) for r in (previous.replicas if previous else [])}

    # Look.
    found = {r.index: r for r in driver.list_replicas(key)}
    network_gone = driver.find_network(key) is None
    observed, broken = [], []  # broken: (index, action, why)
    for index in range(1, count + 1):
        name = replica_name(key, index)
        replica = found.get(index)
        seen = {"name": name, "index": index, "healthy": False, "failures": 0}
        if replica is None:
            seen.update(state="missing", answer="gone")
            broken.append((index, "recreated", f"replica {index} of {count} was missing"))
        elif replica.state != "running":
            seen.update(state=replica.state, answer=replica.state)
            broken.append((index, "restarted", f"replica {index} of {count} was {replica.state}"))
        else:
            ok, answer = probe(replica, timeout=PROBE_TIMEOUT)
            misses = 0 if ok else failures.get(name, 0) + 1
            seen.update(state="running", healthy=ok, failures=misses, answer=answer)
            if misses >= UNHEALTHY_CHECKS:
                broken.append(
                    (
                        index,
                        "replaced",
                        f"replica {index} of {count} failed its health check "
                        f"{misses} times in a row ({answer})",
                    )
                )
        observed.append(seen)
    outcome.healthy = sum(1 for s in observed if s["healthy"])
    # Written before repairing, so the pages show Degraded while it runs.
    _store(tenant, outcome, observed)

    # Repair.
    repairs: list[Repair] = []
    started = time.monotonic()
    if network_gone:
        driver.ensure_network(key, {LABEL_MANAGED: "true", LABEL_TENANT: str(tenant.pk)})
        repairs.append(
            Repair(
                f"network of {tenant.slug} recreated",
                "the network was gone",
                round(time.monotonic() - started, 3),
                target=key,
                action="recreated",
            )
        )
    for index in sorted(i for i in found if i > count):
        # The plan runs fewer replicas than are there (it was changed).
        removed_at = time.monotonic()
        if driver.remove_replica(key, index):
            name = replica_name(key, index)
            repairs.append(
                Repair(
                    f"replica {name} removed",
                    f"the plan runs {count} replica(s)",
                    round(time.monotonic() - removed_at, 3),
                    target=name,
                    action="removed",
                )
            )
    if broken:
        for index, action, _ in broken:
            if action == "replaced":
                driver.remove_replica(key, index)
        _deploy_plan(driver, tenant)
        answered = _wait_until_answering(driver, key, {index for index, _, _ in broken}, started)
        for index, action, why in broken:
            name = replica_name(key, index)
            seconds = answered.get(index)
            done = (
                f"answered after {seconds:.1f}s"
                if seconds is not None
                else f"not answering after {READY_SECONDS:g}s"
            )
            repairs.append(
                Repair(
                    f"replica {name} {action}",
                    f"{why}; {done}",
                    round(seconds if seconds is not None else time.monotonic() - started, 3),
                    target=name,
                    action=action,
                )
            )

    # Look again: ports (an engine restart publishes new ones) and health after repairs.
    now = {r.index: r for r in driver.list_replicas(key)}
    if broken:
        observed = []
        for index in range(1, count + 1):
            replica = now.get(index)
            name = replica_name(key, index)
            if replica is None or replica.state != "running":
                state = replica.state if replica else "missing"
                observed.append(
                    {"name": name, "index": index, "state": state, "healthy": False}
                    | {"failures": 0, "answer": state}
                )
                continue
            ok, answer = probe(replica, timeout=PROBE_TIMEOUT)
            observed.append(
                {"name": name, "index": index, "state": "running", "healthy": ok}
                | {"failures": 0 if ok else 1, "answer": answer}
            )
        outcome.healthy = sum(1 for s in observed if s["healthy"])
    backends = backends_of(now.values(), count)
    made = [r for r in repairs if r.action in REPLICA_ACTIONS and r.target != key]
    for repair in _follow_route(tenant, backends, started):
        if repair.action == "updated" and made:
            # The replicas repaired above came back on new ports: that is part
            # of their repair (one event each, naming the route they left),
            # not a repair of its own.
            for replica_repair in made:
                replica_repair.route = backends
        else:
            repairs.append(repair)
    outcome.repairs = repairs
    with transaction.atomic():
        _record(tenant, repairs, actor=actor, reason=reason, source=source)
        _store(tenant, outcome, observed)


def _deploy_plan(driver, tenant: Tenant) -> None:
    """Bring the tenant's replicas up to its plan, labelled with its provisioning run."""
    plan = tenant.plan
    driver.ensure_image(plan.image)
    run = latest_run(tenant, ProvisioningRun.Kind.PROVISION)
    driver.ensure_replicas(
        tenant.key,
        image=plan.image,
        count=plan.replicas,
        memory_mb=plan.memory_mb,
        pids_limit=plan.pids_limit,
        labels={LABEL_TENANT: str(tenant.pk), LABEL_RUN: str(run.pk if run else "")},
        env={"TENANT_SLUG": tenant.slug, "TENANT_ORG": tenant.org},
    )


def _repair_swarm(tenant: Tenant, driver, outcome: Outcome, *, actor, reason, source) -> None:
    """A swarm tenant: Swarm restarts and reschedules tasks itself, so this pass reports
    them (state, node, health) and repairs only what Swarm cannot: a service or network
    that is gone, a replica count that is not the plan's, a route that does not follow."""
    plan, key = tenant.plan, tenant.key
    count = plan.replicas
    started = time.monotonic()
    service = driver.find_service(key)
    network_gone = driver.find_network(key) is None
    replicas = driver.list_replicas(key)
    observed = _observe(replicas)
    outcome.healthy = sum(1 for s in observed if s["healthy"])
    _store(tenant, outcome, observed)

    repairs: list[Repair] = []
    why = ""
    if service is None or network_gone:
        why = "the service was gone" if service is None else "the network was gone"
        if service is not None:  # a service cannot move to a new network: make both anew
            driver.remove_replicas(key)
        action = "recreated"
    elif driver.desired(service) != count:
        why = f"the service ran {driver.desired(service)} task(s), the plan {count}"
        action = "scaled"
    if why:
        driver.ensure_network(key, {LABEL_MANAGED: "true", LABEL_TENANT: str(tenant.pk)})
        _deploy_plan(driver, tenant)
        answered = _wait_until_answering(driver, key, set(range(1, count + 1)), started)
        done = (
            f"{len(answered)} of {count} replica(s) answered after {max(answered.values()):.1f}s"
            if answered
            else f"no replica answering after {READY_SECONDS:g}s"
        )
        repairs.append(
            Repair(
                f"service {service_name(key)} {action}",
                f"{why}; {done}",
                round(time.monotonic() - started, 3),
                target=service_name(key),
                action=action,
            )
        )
        replicas = driver.list_replicas(key)
        observed = _observe(replicas)
        outcome.healthy = sum(1 for s in observed if s["healthy"])
    backends = backends_of(replicas, count)
    for repair in _follow_route(tenant, backends, started):
        if repairs and repair.action == "updated":
            repairs[0].route = backends
        else:
            repairs.append(repair)
    outcome.repairs = repairs
    with transaction.atomic():
        _record(tenant, repairs, actor=actor, reason=reason, source=source)
        _store(tenant, outcome, observed)


def _observe(replicas) -> list[dict]:
    """What the pages show of each replica: state, node, and its health check's answer."""
    observed = []
    for replica in sorted(replicas, key=lambda r: r.index):
        seen = {
            "name": replica.name,
            "index": replica.index,
            "node": replica.node,
            "ref": replica.ref,
            "state": replica.state,
            "healthy": False,
            "failures": 0,
            "answer": replica.state,
        }
        if replica.state == "running":
            ok, answer = probe(replica, timeout=PROBE_TIMEOUT)
            seen.update(healthy=ok, failures=0 if ok else 1, answer=answer)
        observed.append(seen)
    return observed


def follow_ports(tenant_id: int) -> bool:
    """Point an active tenant's route at its replicas' current ports, now; True if it moved.

    The proxy's quick fix when every backend of a tenant refused (an engine
    restart publishes replicas on new ports): one driver call rather than a
    whole pass, and nothing if a repair of the tenant is running already.
    """
    tenant = Tenant.objects.select_related("plan").filter(pk=tenant_id).first()
    if tenant is None or not tenant.workload_driver or not_repairable(tenant):
        return False  # (no driver recorded: no workloads of the platform's to follow)
    if not _try_lock(tenant.pk):
        return False
    try:
        started = time.monotonic()
        replicas = driver_for(tenant).list_replicas(tenant.key)
        repairs = _follow_route(tenant, backends_of(replicas, tenant.plan.replicas), started)
        with transaction.atomic():
            _record(tenant, repairs, actor=None, reason="", source="proxy")
        return bool(repairs)
    except Exception as exc:  # the engine is away: the caller answers 502 as before
        logger.info("following %s's ports: %s", tenant.slug, exc)
        return False
    finally:
        _unlock(tenant.pk)


def backends_of(replicas, count: int) -> list[str]:
    """host:port of the plan's running replicas, in replica order."""
    running = [r for r in replicas if 1 <= r.index <= count and r.state == "running" and r.port]
    return [f"{r.host}:{r.port}" for r in sorted(running, key=lambda r: r.index)]


def _record(tenant: Tenant, repairs: list[Repair], *, actor, reason: str, source: str) -> None:
    for repair in repairs:
        record_event(
            "tenant.workload.repaired",
            tenant=tenant,
            actor=actor,
            details={**repair.as_dict(), "source": source, "reason": reason},
        )


def _wait_until_answering(driver, key: str, indexes: set[int], started: float) -> dict:
    """Seconds from ``started`` until each repaired replica answered /healthz (absent: never)."""
    answered: dict[int, float] = {}
    delay = 0.05
    while indexes - answered.keys() and time.monotonic() - started < READY_SECONDS:
        for replica in driver.list_replicas(key):
            waiting = replica.index in indexes and replica.index not in answered
            if waiting and replica.state == "running" and probe(replica, PROBE_TIMEOUT)[0]:
                answered[replica.index] = time.monotonic() - started
        if indexes - answered.keys():
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    return answered


def _follow_route(tenant: Tenant, backends: list[str], started: float) -> list[Repair]:
    """Point the route at ``backends`` and switch it on; the repairs that took."""
    if not backends:
        return []  # nothing runs: leave the route as it was rather than empty it
    repairs = []
    route = Route.objects.filter(tenant=tenant).first()
    if route is None:
        Route.objects.create(
            tenant=tenant,
            hostname=tenant.hostname,
            network=network_name(tenant.key),
            backends=backends,
            enabled=True,
        )
        why, action = "the route was gone", "recreated"
    else:
        changes = {}
        reasons = []
        if list(route.backends or []) != backends:
            changes["backends"] = backends
            reasons.append(
                f"replicas answer on {', '.join(backends)}, the route named "
                f"{', '.join(route.backends or []) or 'nothing'}"
            )
        if not route.enabled:
            changes["enabled"] = True
            reasons.append("the route was switched off")
        if not changes:
            return []
        # Conditional on what was read, so a concurrent change (a decommission
        # emptying it) is not overwritten with stale ports.
        updated = Route.objects.filter(
            pk=route.pk, backends=route.backends, enabled=route.enabled
        ).update(**changes)
        if not updated:
            return []
        why = "; ".join(reasons)
        action = "updated" if "backends" in changes else "switched on"
    repairs.append(
        Repair(
            f"route {tenant.hostname} {action}",
            why,
            round(time.monotonic() - started, 3),
            target=tenant.hostname,
            action=action,
        )
    )
    return repairs


def _store(tenant: Tenant, outcome: Outcome, observed: list[dict] | None) -> None:
    """Keep what this pass saw; announce the tenant when what the pages show changed."""
    now = timezone.now()
    with transaction.atomic():
        health, _ = WorkloadHealth.objects.select_for_update().get_or_create(tenant=tenant)
        before = (health.healthy, health.expected, health.error, _chips(health.replicas))
        health.expected = outcome.expected
        health.error = outcome.error
        if observed is not None:
            health.replicas = observed
            health.healthy = outcome.healthy
        elif outcome.error:
            health.healthy = 0  # nothing could be checked: nothing is known to be healthy
            health.replicas = [r | {"healthy": False} for r in health.replicas]
        health.checked_at = now
        if health.degraded:
            health.degraded_since = health.degraded_since or now
        else:
            health.degraded_since = None
        health.save()
        if before != (health.healthy, health.expected, health.error, _chips(health.replicas)):
            announce([f"tenant-{tenant.pk}", "tenants"])


def _chips(replicas: list[dict]) -> list[tuple]:
    """What the pages show of each replica (not the counters that change every pass)."""
    return [(r.get("name"), r.get("state"), r.get("healthy")) for r in replicas or []]


@contextlib.contextmanager
def excluding_repairs(tenant: Tenant):
    """Wait for a repair pass of ``tenant`` to end and keep others out meanwhile.

    Removing a tenant's replicas (undo, decommission) holds this, so a pass
    that began while the tenant was active cannot recreate a replica just
    removed; a pass after it sees the tenant is no longer active.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [REPAIR_LOCK, tenant.pk])
    try:
        yield
    finally:
        _unlock(tenant.pk)


def _try_lock(tenant_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [REPAIR_LOCK, tenant_id])
        return bool(cursor.fetchone()[0])


def _unlock(tenant_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [REPAIR_LOCK, tenant_id])
