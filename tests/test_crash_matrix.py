"""The crash matrix: the worker dies at every point of every step, and of undoing two.

Real qcluster processes and the Docker driver. For each of the saga's
steps, a tenant whose worker ends abruptly (``os._exit``, as a SIGKILL
would: no cleanup, no rollback of what was committed) at one of three
points, once (the ``crash_at`` fault):

- ``before_effect``: after "running" is recorded, before the step's work;
- ``after_effect``: after the work, before its result is recorded;
- ``after_record``: after the result is recorded.

The same three points while ``deploy_workloads`` and ``allocate_network``
are undone (a permanent fault at ``wait_ready`` makes the run compensate).

Every case must reach a terminal state with no operator action (the
cluster respawns the worker, and the new one resumes the run whose lease
names a dead process), hold every resource exactly once when active and
none when failed, never run a finished step again, and tell the truth in
its audit log. The cases run side by side on one cluster and one database
(each crash ends one worker, which holds one run at a time), so the matrix
fits the suite's time budget. The table it prints is docs/RELIABILITY.md's.
"""

from __future__ import annotations

import time

import pytest

from provisioning import actions, faults, reconcile
from provisioning.drivers import clear_cache, get_driver
from provisioning.models import ProvisioningRun
from provisioning.steps import STEP_IDS
from tenants.models import Tenant
from tests.conftest import wait_for
from tests.crash_support import audit_problems, resource_problems, resources
from tests.docker_support import require_docker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

UNDONE = ("deploy_workloads", "allocate_network")
# Plenty for every case; the whole matrix settles in well under a minute.
SETTLE_SECONDS = 120


def cases() -> list[dict]:
    matrix = [
        {"step": step, "point": point, "undo": False, "want": "active"}
        for step in STEP_IDS
        for point in faults.CRASH_POINTS
    ]
    matrix += [
        {"step": step, "point": point, "undo": True, "want": "failed"}
        for step in UNDONE
        for point in faults.CRASH_POINTS
    ]
    return matrix


def crashes(run: ProvisioningRun) -> int:
    return sum(1 for fault in run.faults if fault["kind"] == "crash_at" and fault.get("used"))


def test_every_crash_point_of_every_step_ends_terminal_with_each_resource_once(
    plans, settings, cluster_factory
):
    require_docker()
    settings.WORKLOAD_DRIVER = "docker"
    settings.PROVISIONING_FAULTS_ENABLED = True
    clear_cache()
    cluster = cluster_factory(
        "matrix",
        WORKLOAD_DRIVER="docker",
        # A crash is resumed when the respawned worker finds the dead owner
        # (provisioning.signals); a short lease bounds it otherwise.
        PROVISIONING_LEASE_SECONDS="3",
        PROVISIONING_HEARTBEAT_SECONDS="1",
        PROVISIONING_BACKOFF_BASE="0.05",
        PROVISIONING_BACKOFF_MAX="0.2",
    )
    began = time.monotonic()
    matrix = cases()
    for n, case in enumerate(matrix):
        injected = [faults.crash_at(case["step"], case["point"], undo=case["undo"])]
        if case["undo"]:
            injected.append(faults.parse("wait_ready:permanent"))
        # pro: two replicas, so a duplicate container would show.
        case["tenant"] = actions.create_tenant(
            slug=f"cm{n:02d}",
            org="matrix",
            plan="pro",
            admin_email="admin@example.com",
            faults=injected,
        )
        case["created"] = time.monotonic()

    def settled():
        live = ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE).count()
        return live == 0

    try:
        wait_for(settled, timeout=SETTLE_SECONDS, poll=0.2, message="every case to settle")
    except AssertionError:
        print(cluster.log_path.read_text()[-6000:])
        raise
    settle_s = time.monotonic() - began

    managed = get_driver().list_managed()
    rows, problems = [], []
    for case in matrix:
        tenant = Tenant.objects.select_related("plan").get(pk=case["tenant"].pk)
        run = actions.latest_run(tenant)
        step = run.steps.get(step_id=case["step"])
        found = resources(tenant, managed)
        wrong = resource_problems(tenant, found) + audit_problems(run)
        if tenant.state != case["want"]:
            wrong.append(f"ended {tenant.state}, want {case['want']}")
        if crashes(run) != 1:
            wrong.append(f"the worker died {crashes(run)} times, want 1")
        # After the last record of the saga the run has ended: nothing to resume.
        last = case["step"] == STEP_IDS[-1] and case["point"] == "after_record"
        if run.resumes != (0 if last else 1):
            wrong.append(f"resumed {run.resumes} times, want {0 if last else 1}")
        if case["undo"] and run.failed_step != "wait_ready":
            wrong.append(f"failed at {run.failed_step!r}, want wait_ready")
        attempts = {s.step_id: s.attempts for s in run.steps.all()}
        if max(attempts.values()) > 2:
            wrong.append(f"attempts {attempts}")
        label = f"{case['step']} {'undo ' if case['undo'] else ''}{case['point']}"
        problems += [f"{label}: {w}" for w in wrong]
        rows.append(
            (
                case["step"] + (" (undo)" if case["undo"] else ""),
                case["point"],
                tenant.state,
                step.attempts,
                "; ".join(f"{k} {v}" for k, v in sorted(found.items()) if v) or "none",
                "yes" if not wrong else "NO",
            )
        )
    print(f"\n{len(matrix)} cases settled in {settle_s:.1f} s\n")
    print("| step | crash point | outcome | step attempts | resources after | checks |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    assert not problems, "\n".join(problems)

    # Then every active one is decommissioned, and nothing is left anywhere.
    for case in matrix:
        tenant = Tenant.objects.get(pk=case["tenant"].pk)
        if tenant.state == "active":
            actions.decommission_tenant(tenant)
    wait_for(settled, timeout=SETTLE_SECONDS, poll=0.2, message="every decommission")
    managed = get_driver().list_managed()
    for case in matrix:
        tenant = Tenant.objects.select_related("plan").get(pk=case["tenant"].pk)
        assert tenant.state in ("decommissioned", "failed"), tenant.state
        assert resource_problems(tenant, resources(tenant, managed)) == []
        assert audit_problems(actions.latest_run(tenant)) == []
    report = reconcile.find_drift()
    # Only this test's tenants: earlier tests in this process may leave theirs.
    ours = {case["tenant"].pk for case in matrix}
    findings = [f for f in report.findings if f.tenant_id in ours]
    assert findings == [] and report.errors == [], findings
    print(f"matrix, decommission and reconcile: {time.monotonic() - began:.1f} s")
