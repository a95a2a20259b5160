"""A worker that lost its lease touches nothing (issue 8, point 5).

Real qclusters and the Docker driver. The first cluster is frozen (SIGSTOP of
its whole process group: a stalled host, a paused VM, a worker cut off from
the database) while it deploys a tenant's workloads, for longer than the
lease. A second cluster takes the run over when the lease expires and
finishes it. Then the first one wakes up (SIGCONT) in the middle of its step:
its next Docker or SQL call is refused, and what the second one made stays
as it was.
"""

import os
import signal
import time

import pytest

from provisioning import actions
from provisioning.drivers import get_driver
from provisioning.models import StepRun
from tests.conftest import new_tenant, wait_for
from tests.docker_support import require_docker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster, pytest.mark.broker]

LEASE = "3"


def settle(tenant, timeout=60):
    wait_for(
        lambda: not actions.latest_run(tenant).is_live, timeout=timeout, message="the run to end"
    )
    tenant.refresh_from_db()
    return tenant


def test_a_frozen_worker_that_wakes_after_losing_its_lease_touches_nothing(plans, cluster_factory):
    require_docker()
    env = {
        "WORKLOAD_DRIVER": "docker",
        "PROVISIONING_LEASE_SECONDS": LEASE,
        "PROVISIONING_HEARTBEAT_SECONDS": "1",
        # A transaction the frozen worker left open ends this soon, freeing the run's row.
        "DB_IDLE_IN_TRANSACTION_SECONDS": "2",
        "LOG_LEVEL": "INFO",
    }
    stale = cluster_factory("stale", **env)
    tenant = new_tenant("frozen", plan="pro")
    deploy = StepRun.objects.filter(run__tenant=tenant, step_id="deploy_workloads")
    wait_for(
        lambda: deploy.filter(status="running").exists(),
        timeout=60,
        poll=0.005,
        message="deploy_workloads to start",
    )
    os.killpg(stale.proc.pid, signal.SIGSTOP)
    frozen_in = deploy.get().progress.get("message", "")
    try:
        time.sleep(float(LEASE) + 1)  # the lease expires while the worker is frozen
        fresh = cluster_factory("fresh", **env)
        try:
            settle(tenant)
        except AssertionError:
            print(fresh.log_path.read_text()[-4000:])
            raise
        assert tenant.state == "active"
        replicas = {r.name: r.ref for r in get_driver().list_replicas(tenant.key)}
        assert len(replicas) == 2
        run = actions.latest_run(tenant)
        fence = run.fence
    finally:
        os.killpg(stale.proc.pid, signal.SIGCONT)
    # The frozen worker goes on where it stopped; give it time to try.
    time.sleep(3)
    after = {r.name: r.ref for r in get_driver().list_replicas(tenant.key)}
    run.refresh_from_db()
    tenant.refresh_from_db()
    assert after == replicas, f"frozen in {frozen_in!r}: the stale worker changed the replicas"
    assert tenant.state == "active" and run.status == "succeeded" and run.fence == fence
    assert deploy.get().attempts == 2  # the frozen attempt and the one that finished
    # It woke up refused: by its own clock (the lease was not renewed in time),
    # by the fence (a newer claim), or cut off (PostgreSQL ended its session).
    log = stale.log_path.read_text()
    stopped = [line for line in log.splitlines() if f"run {run.pk}: stopped" in line]
    assert stopped, log[-2000:]
    print(f"\nthe frozen worker was in {frozen_in!r}; then: {stopped[0]}")
    actions.decommission_tenant(tenant)
    settle(tenant)
    assert get_driver().list_replicas(tenant.key) == []
