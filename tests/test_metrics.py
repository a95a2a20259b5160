"""/metrics: who may scrape it, and values computed from the database (provisioning.metrics)."""

from __future__ import annotations

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from provisioning import actions
from provisioning.audit import record_event
from provisioning.models import StepRun
from tests.conftest import drive, new_tenant
from tests.views_support import activate, create, fail

FAMILIES = {
    "provisioning_step_duration_seconds": "histogram",
    "provisioning_runs": "counter",
    "provisioning_runs_in_flight": "gauge",
    "provisioning_step_retries": "counter",
    "provisioning_stalls": "counter",
    "provisioning_queue_wait_seconds": "histogram",
    "tenants": "gauge",
    "tenant_replicas_healthy": "gauge",
    "tenant_replicas_expected": "gauge",
}


def scrape(**extra) -> dict:
    response = Client().get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(response.content.decode())}


def value(families: dict, name: str, sample: str | None = None, **labels) -> float:
    family = families[name]
    return sum(
        s.value
        for s in family.samples
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.mark.django_db(transaction=True)
def test_the_step_histogram_counts_every_finished_step(plans, operator):
    for slug in ("acme", "beta"):
        assert drive(new_tenant(slug, user=operator)) == "succeeded"
    finished = StepRun.objects.filter(status="succeeded", finished_at__isnull=False)
    families = scrape()
    assert families.keys() >= FAMILIES.keys()
    for name, kind in FAMILIES.items():
        assert families[name].type == kind, name
    step_count = "provisioning_step_duration_seconds_count"
    assert value(families, "provisioning_step_duration_seconds", step_count) == finished.count()
    assert value(families, "provisioning_step_duration_seconds", step_count, step="validate") == 2
    total = sum((s.finished_at - s.started_at).total_seconds() for s in finished)
    step_sum = value(families, "provisioning_step_duration_seconds", step_count[:-6] + "_sum")
    assert step_sum == pytest.approx(total, abs=0.01)
    assert value(families, "provisioning_runs", "provisioning_runs_total", outcome="succeeded") == 2
    assert value(families, "provisioning_runs_in_flight") == 0
    assert value(families, "tenants", state="active") == 2
    assert value(families, "tenants", state="failed") == 0
    wait_count = "provisioning_queue_wait_seconds_count"
    assert value(families, "provisioning_queue_wait_seconds", wait_count, kind="provision") == 2
    for tenant in ("acme", "beta"):
        actions.decommission_tenant(actions.Tenant.objects.get(slug=tenant))
        assert drive(actions.Tenant.objects.get(slug=tenant)) == "decommissioned"
    after = scrape()
    assert value(after, "tenants", state="decommissioned") == 2
    assert value(after, "provisioning_runs", "provisioning_runs_total", kind="decommission") == 2


def test_outcomes_and_states_are_counted_from_the_rows(operator):
    activate(create(operator, slug="acme"))
    fail(create(operator, slug="beta"))
    fail(create(operator, slug="gamma"), cancelled=True)
    create(operator, slug="delta")
    families = scrape()
    total = "provisioning_runs_total"
    assert value(families, "provisioning_runs", total, kind="provision", outcome="succeeded") == 1
    assert value(families, "provisioning_runs", total, kind="provision", outcome="failed") == 1
    assert value(families, "provisioning_runs", total, kind="provision", outcome="cancelled") == 1
    assert value(families, "provisioning_runs_in_flight") == 1
    assert value(families, "tenants", state="provisioning") == 1
    assert value(families, "tenants", state="failed") == 2


@pytest.mark.parametrize(
    "request_from",
    [
        {"REMOTE_ADDR": "203.0.113.9"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REAL_IP": "203.0.113.9"},
        {"REMOTE_ADDR": "203.0.113.9", "HTTP_AUTHORIZATION": "Bearer wrong"},
        {"REMOTE_ADDR": "203.0.113.9", "HTTP_AUTHORIZATION": "Bearer "},
    ],
)
def test_a_scrape_from_elsewhere_without_the_token_is_403(db, settings, request_from):
    settings.METRICS_TOKEN = "s3cret-metrics"
    response = Client().get("/metrics", **request_from)
    assert response.status_code == 403
    assert b"tenants" not in response.content


def test_without_a_configured_token_no_bearer_value_is_accepted(db, settings):
    settings.METRICS_TOKEN = ""
    response = Client().get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 403


def test_a_scrape_with_the_token_is_answered_from_anywhere(db, settings):
    settings.METRICS_TOKEN = "s3cret-metrics"
    families = scrape(REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret-metrics")
    assert value(families, "tenants", state="active") == 0


def test_ipv6_loopback_is_loopback(db):
    assert "tenants" in scrape(REMOTE_ADDR="::1")


def test_retries_and_stalls_are_counted_by_step_from_their_events(operator):
    tenant = create(operator)
    for step in ("deploy_workloads", "deploy_workloads", "wait_ready"):
        record_event("tenant.provisioning.step_retrying", tenant=tenant, details={"step": step})
    record_event("tenant.provisioning.stalled", tenant=tenant, details={"step": "wait_ready"})
    families = scrape()
    retries = "provisioning_step_retries_total"
    assert value(families, "provisioning_step_retries", retries, step="deploy_workloads") == 2
    assert value(families, "provisioning_step_retries", retries, step="wait_ready") == 1
    assert value(families, "provisioning_step_retries", retries, step="validate") == 0
    stalls = "provisioning_stalls_total"
    assert value(families, "provisioning_stalls", stalls, step="wait_ready") == 1
    assert value(families, "provisioning_stalls", stalls) == 1
