"""An engine outage is retried for a time, parked, not for the step's attempts.

Driven in this process against real PostgreSQL. The outage itself is the
driver raising the error it raises when dockerd does not answer
(errors.EngineOutage, what errors.classify makes of a refused connection or a
missing socket); tests/test_engine_restart.py restarts a real engine.
"""

import time

import pytest

from provisioning import actions, engine
from provisioning.errors import EngineOutage
from provisioning.models import AuditEvent, ProvisioningRun, StepRun
from provisioning.steps import BY_ID
from tests.conftest import drive, new_tenant

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def away(monkeypatch, settings):
    """allocate_network's run (forward) or compensate (undo) meets an engine that is
    away for the first ``calls`` calls."""
    settings.WORKLOAD_DRIVER = "process"
    calls = {"run": 0, "compensate": 0}
    limits = {"run": 0, "compensate": 0}
    step = BY_ID["allocate_network"]
    real_run, real_compensate = type(step).run, type(step).compensate

    def run(self, ctx):
        calls["run"] += 1
        if calls["run"] <= limits["run"]:
            raise EngineOutage("Docker Engine unreachable: connection refused")
        return real_run(self, ctx)

    def compensate(self, ctx):
        calls["compensate"] += 1
        if calls["compensate"] <= limits["compensate"]:
            raise EngineOutage("Docker Engine unreachable: connection refused")
        return real_compensate(self, ctx)

    monkeypatch.setattr(type(step), "run", run)
    monkeypatch.setattr(type(step), "compensate", compensate)
    monkeypatch.setattr(engine, "OUTAGE_RETRY_SECONDS", 0.05)
    return calls, limits


def network_step(tenant) -> StepRun:
    return StepRun.objects.get(run__tenant=tenant, step_id="allocate_network")


def test_an_outage_outlasts_the_steps_attempts_and_the_run_waits_parked(plans, away):
    calls, limits = away
    limits["run"] = 5  # the step's budget is 3 attempts
    tenant = new_tenant("outage")
    run = actions.latest_run(tenant)
    assert engine.advance(run.pk) == "parked"
    run.refresh_from_db()
    step = network_step(tenant)
    assert run.is_parked and run.wait_reason.startswith("Docker Engine unreachable, retrying until")
    assert step.status == "retrying" and step.error_category == "docker_unreachable"
    assert step.progress["message"] == run.wait_reason
    time.sleep(0.1)  # due (OUTAGE_RETRY_SECONDS is 0.05 here)
    assert drive(tenant) == "succeeded"
    tenant.refresh_from_db()
    step.refresh_from_db()
    assert tenant.state == "active"
    assert step.attempts == 6 and calls["run"] == 6
    actions.decommission_tenant(tenant)
    drive(tenant)


def test_past_the_outage_budget_the_step_fails_and_compensates(plans, away, settings):
    calls, limits = away
    limits["run"] = 10**6
    settings.WORKLOAD_ENGINE_OUTAGE_SECONDS = 0.3
    tenant = new_tenant("gone")
    assert drive(tenant) == "failed"
    tenant.refresh_from_db()
    run = actions.latest_run(tenant)
    assert tenant.state == "failed" and run.failed_step == "allocate_network"
    assert run.error_category == "docker_unreachable"
    assert calls["run"] >= 2  # retried on the clock, not once


def test_an_undo_waits_for_the_engine_parked_and_resumes_where_it_was(plans, away, faults_enabled):
    calls, limits = away
    limits["compensate"] = 3
    tenant = new_tenant("undo", faults=["deploy_workloads:permanent"])
    run = actions.latest_run(tenant)
    assert engine.advance(run.pk) == "parked"  # compensating, the undo waits
    run.refresh_from_db()
    assert run.status == ProvisioningRun.Status.COMPENSATING and run.is_parked
    assert run.wait_reason.startswith("Docker Engine unreachable")
    undone = AuditEvent.objects.filter(run=run, type="tenant.provisioning.compensated")
    before = list(undone.values_list("details__step", flat=True))
    assert "allocate_network" not in before and "deploy_workloads" in before
    time.sleep(0.1)
    assert drive(tenant) == "failed"
    after = list(undone.order_by("seq").values_list("details__step", flat=True))
    # Each step undone once: the resume went on at allocate_network.
    assert sorted(after) == sorted(set(after))
    assert after[len(before)] == "allocate_network"
    assert calls["compensate"] == 4
