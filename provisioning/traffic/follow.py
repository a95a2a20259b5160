"""Routes follow the replicas that run now: a swarm tenant's tasks move.

Swarm restarts a task that died and reschedules tasks off a node that is
drained or down, and each new task publishes its port on the node that runs
it. So a swarm tenant's route is kept on its current tasks:

- ``point_route`` / ``follow_current``: wait_ready and mark_active point the
  route at the replicas running now before traffic is verified, and
  wait_ready records where each replica runs (``record_placement``);
- ``follow_swarm``: one pass over every active swarm tenant, three API calls
  for all of them (services, running tasks, nodes). A route whose tasks moved
  gets their addresses (and with it the nginx route table, rewritten on every
  route change), the pages' replica chips show the node each replica runs on,
  and each move is one ``tenant.workload.rescheduled`` audit event (which
  replica, from which node to which, the route now);
- ``Follower``: a thread that runs ``follow_swarm`` every ``FOLLOW_SECONDS``.
  Every qcluster worker starts one (provisioning.signals) while swarm tenants
  exist; a PostgreSQL advisory lock lets one of them follow at a time, on any
  host, and passes to another when its worker dies;
- the console's proxy, when every backend refused, asks the tenant's driver
  too (``repair.follow_ports``), so a request does not wait for the next pass.

Health chips of replicas that did not move are kept from the repair loop's
last look; a replica that moved is probed once, here.
"""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from provisioning.audit import announce, record_event
from provisioning.drivers.readiness import probe
from provisioning.models import Route, WorkloadHealth
from tenants.models import Tenant

log = logging.getLogger("provisioning.traffic")

FOLLOW_SECONDS = 1.0  # between passes while swarm tenants exist
IDLE_SECONDS = 10.0  # between looks for swarm tenants while there are none
PROBE_TIMEOUT = 1.0
# pg_try_advisory_lock(FOLLOW_LOCK, 0): one follower per database.
FOLLOW_LOCK = 0x666C  # "fl"


def point_route(tenant: Tenant, backends: list[str]) -> bool:
    """Point ``tenant``'s route at ``backends`` (when any); True when it changed."""
    if not backends:
        return False
    changed = Route.objects.filter(tenant=tenant).exclude(backends=backends)
    return bool(changed.update(backends=backends))


def follow_current(tenant: Tenant, driver, count: int) -> list[str]:
    """Point the route at the replicas running now; the new backends when it moved, else []."""
    from provisioning.repair import backends_of

    backends = backends_of(driver.list_replicas(tenant.key), count)
    return backends if point_route(tenant, backends) else []


def swarm_tenants():
    """Active swarm tenants, also while their run's last, best-effort step (the welcome
    emails) runs: once active, the route is the follower's to keep."""
    return (
        Tenant.objects.filter(state=Tenant.State.ACTIVE, workload_driver="swarm")
        .select_related("plan", "route")
        .order_by("pk")
    )


def record_placement(tenant: Tenant, replicas) -> None:
    """What wait_ready saw when every replica answered: the follower's first picture of
    where each replica runs, so a move right after activation is seen as one."""
    chips = [
        {
            "name": r.name,
            "index": r.index,
            "node": r.node,
            "ref": r.ref,
            "state": r.state,
            "healthy": True,
            "failures": 0,
            "answer": "200",
            "running": {"ref": r.ref, "node": r.node},
        }
        for r in sorted(replicas, key=lambda r: r.index)
    ]
    WorkloadHealth.objects.update_or_create(
        tenant=tenant,
        defaults={
            "replicas": chips,
            "expected": tenant.plan.replicas,
            "healthy": len(chips),
            "error": "",
            "checked_at": timezone.now(),
            "degraded_since": None,
        },
    )


def follow_swarm(driver=None) -> list[dict]:
    """One pass over every active swarm tenant; the moves it recorded."""
    from provisioning.drivers import get_driver
    from provisioning.repair import backends_of

    tenants = list(swarm_tenants())
    if not tenants:
        return []
    driver = driver or get_driver("swarm")
    current = driver.replicas_by_key()
    moves = []
    for tenant in tenants:
        replicas = current.get(tenant.key)
        if replicas is None:
            continue  # no service: the repair loop recreates it
        moved = _follow(tenant, replicas, backends_of(replicas, tenant.plan.replicas))
        if moved:
            moves.append(moved)
    return moves


def _follow(tenant: Tenant, replicas, backends: list[str]) -> dict | None:
    health = WorkloadHealth.objects.filter(tenant=tenant).first()
    before = {r.get("name"): r for r in (health.replicas if health else [])}
    route = getattr(tenant, "route", None)
    was = list(route.backends or []) if route else []
    chips, changes = [], []
    for replica in sorted(replicas, key=lambda r: r.index):
        old = before.get(replica.name) or {}
        # The slot's last running task (kept while a new one is starting), so a
        # move is seen whether or not a pass caught the task in between.
        last = old.get("running")
        if last is None and old.get("state") == "running":
            last = {"ref": old.get("ref"), "node": old.get("node", "")}
        seen = {
            "name": replica.name,
            "index": replica.index,
            "node": replica.node,
            "ref": replica.ref,
            "state": replica.state,
            "healthy": old.get("healthy", False),
            "failures": old.get("failures", 0),
            "answer": old.get("answer", replica.state),
            "running": last,
        }
        if old.get("ref") != replica.ref or old.get("state") != replica.state:
            if replica.state == "running":
                ok, answer = probe(replica, timeout=PROBE_TIMEOUT)
                seen.update(healthy=ok, failures=0 if ok else 1, answer=answer)
            else:
                seen.update(healthy=False, answer=replica.state)
        if replica.state == "running":
            seen["running"] = {"ref": replica.ref, "node": replica.node}
            if last and last.get("ref") != replica.ref:
                changes.append(
                    {
                        "replica": replica.name,
                        "from_node": last.get("node", ""),
                        "to_node": replica.node,
                        "address": f"{replica.host}:{replica.port}",
                    }
                )
        chips.append(seen)
    route_moved = bool(backends) and route is not None and was != backends
    chips_changed = [_shown(c) for c in chips] != [_shown(c) for c in before.values()]
    if not (route_moved or chips_changed or changes):
        return None
    with transaction.atomic():
        if route_moved:
            # Conditional on what was read: a decommission emptying it wins.
            route_moved = bool(
                Route.objects.filter(pk=route.pk, backends=route.backends).update(backends=backends)
            )
        row, _ = WorkloadHealth.objects.select_for_update().get_or_create(tenant=tenant)
        row.replicas = chips
        row.expected = tenant.plan.replicas
        row.healthy = sum(1 for c in chips if c["healthy"])
        row.checked_at = row.checked_at or timezone.now()
        if row.degraded:
            row.degraded_since = row.degraded_since or timezone.now()
        else:
            row.degraded_since = None
        row.save()
        moved = None
        if changes:
            # One event per replica (or replicas) that runs again elsewhere; a
            # route that only lost a stopping task changes without one.
            now = backends if route_moved else was
            moved = {"moves": changes, "route": now, "was": was}
            record_event("tenant.workload.rescheduled", tenant=tenant, details=moved)
        else:
            announce([f"tenant-{tenant.pk}", "tenants"])
    return moved


def _shown(chip: dict) -> tuple:
    return (chip.get("name"), chip.get("state"), chip.get("healthy"), chip.get("node"))


class Follower:
    """``follow_swarm`` every FOLLOW_SECONDS in a daemon thread, one holder per database."""

    def __init__(self, interval: float = FOLLOW_SECONDS):
        self.interval = interval
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="swarm-follower", daemon=True)
        self.lock_conn = None
        self.last_error = ""

    def start(self) -> Follower:
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)

    def _holds_lock(self) -> bool:
        import psycopg

        from provisioning.pgconn import conninfo

        if self.lock_conn is not None and not self.lock_conn.closed:
            return True
        # Its own connection (autocommit), so the lock lasts exactly as long as
        # this follower, and goes with the connection if its worker dies.
        conn = psycopg.connect(**{**conninfo(), "application_name": "tenant-console-follower"})
        got = conn.execute("SELECT pg_try_advisory_lock(%s, 0)", [FOLLOW_LOCK]).fetchone()[0]
        if got:
            self.lock_conn = conn
            return True
        conn.close()
        return False

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                wait = self.interval
                try:
                    close_old_connections()
                    swarm = Tenant.objects.filter(workload_driver="swarm")
                    if not swarm.exclude(state=Tenant.State.DECOMMISSIONED).exists():
                        wait = IDLE_SECONDS
                    elif self._holds_lock():
                        follow_swarm()
                        self.last_error = ""
                    else:
                        wait = IDLE_SECONDS / 2  # another worker follows; look again later
                except Exception as exc:  # the manager or the database away: try again
                    # The whole traceback once per kind of failure, not every 2 s.
                    text = f"{exc.__class__.__name__}: {exc}"
                    if text != self.last_error:
                        log.exception("following the swarm's tasks failed")
                    else:
                        log.warning("following the swarm's tasks failed again: %s", text)
                    self.last_error = text
                    if self.lock_conn is not None:
                        self.lock_conn.close()
                        self.lock_conn = None
                    wait = max(self.interval, 2.0)
                self.stopping.wait(wait)
        finally:
            if self.lock_conn is not None:
                self.lock_conn.close()
            connection.close()


_follower: Follower | None = None
_started = threading.Lock()


def ensure_follower() -> Follower | None:
    """Start this process's follower once, when swarm tenants exist or are to be made."""
    global _follower
    from django.conf import settings

    with _started:
        if _follower is not None:
            return _follower
        wanted = settings.WORKLOAD_DRIVER == "swarm"
        wanted = wanted or Tenant.objects.filter(workload_driver="swarm").exists()
        if not wanted:
            return None
        _follower = Follower().start()
        log.info("swarm follower started")
        return _follower
