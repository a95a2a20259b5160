"""Expected step durations from history: median and p95 per step and plan, with defaults."""

import itertools
from datetime import timedelta

import pytest
from django.utils import timezone

from console.presenters.detail import detail_context
from provisioning import expectations
from provisioning.expectations import expectation, expected_seconds, percentile
from provisioning.models import StepRun
from tests.views_support import create, run_of, start

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache():
    expectations.clear_cache()
    yield
    expectations.clear_cache()


_made = itertools.count()


def finished(operator, step_id: str, durations, plan="free", status="succeeded"):
    """One tenant per duration whose ``step_id`` finished in that many seconds."""
    now = timezone.now()
    for seconds in durations:
        tenant = create(operator, slug=f"hist{next(_made)}", plan=plan)
        StepRun.objects.filter(run=run_of(tenant), step_id=step_id).update(
            status=status,
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
        )


def test_percentile_interpolates_between_ranks():
    assert percentile([1, 2, 3, 4, 5], 0.5) == 3
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([10], 0.95) == 10
    assert percentile(list(range(1, 101)), 0.95) == pytest.approx(95.05)


def test_defaults_before_there_is_enough_history(operator, plans):
    finished(operator, "deploy_workloads", [20, 20, 20, 20])  # 4 < 5 samples
    found = expectation("deploy_workloads", plans["free"])
    assert found.source == "default"
    assert found.samples == 4
    assert found.median == expectations.default_seconds("deploy_workloads", plans["free"])
    assert found.p95 == pytest.approx(found.median * expectations.DEFAULT_P95_RATIO)
    # Larger plans deploy more replicas: the default grows with them.
    assert expected_seconds("deploy_workloads", plans["enterprise"]) > found.median


def test_median_and_p95_of_recent_successes(operator, plans):
    finished(operator, "deploy_workloads", [2, 4, 6, 8, 10, 30])
    found = expectation("deploy_workloads", plans["free"])
    assert found.source == "history" and found.samples == 6
    assert found.median == pytest.approx(7.0, abs=0.05)
    assert found.p95 == pytest.approx(25.0, abs=0.1)
    assert expected_seconds("deploy_workloads", plans["free"]) == pytest.approx(7.0, abs=0.05)


def test_history_is_per_plan_and_counts_only_successes(operator, plans):
    finished(operator, "wait_ready", [5, 5, 5, 5, 5], plan="pro")
    finished(operator, "wait_ready", [50, 50, 50, 50, 50], plan="free", status="failed")
    assert expectation("wait_ready", plans["pro"]).median == pytest.approx(5.0, abs=0.05)
    assert expectation("wait_ready", plans["free"]).source == "default"


def test_only_the_latest_window_counts(operator, plans, settings):
    settings.PROVISIONING_EXPECTATION_WINDOW = 5
    settings.PROVISIONING_EXPECTATION_MIN_SAMPLES = 3
    finished(operator, "seed_schema", [100, 100, 100])
    expectations.clear_cache()
    finished(operator, "seed_schema", [1, 1, 1, 1, 1])
    # Make the 100 s runs older than the 1 s ones.
    old = timezone.now() - timedelta(hours=1)
    for step in StepRun.objects.filter(step_id="seed_schema", status="succeeded"):
        if step.duration_s > 50:
            StepRun.objects.filter(pk=step.pk).update(
                started_at=old - timedelta(seconds=100), finished_at=old
            )
    assert expectation("seed_schema", plans["free"]).p95 == pytest.approx(1.0, abs=0.05)


def test_numbers_are_cached_per_process(operator, plans, settings, django_assert_num_queries):
    finished(operator, "validate", [1, 1, 1, 1, 1])
    assert expectation("validate", plans["free"]).source == "history"
    with django_assert_num_queries(0):
        for step in ("validate", "wait_ready", "deploy_workloads"):
            expectation(step, plans["free"])
    settings.PROVISIONING_EXPECTATION_CACHE_SECONDS = 0
    with django_assert_num_queries(1):
        expectation("validate", plans["free"])


def test_progress_bar_and_timeline_use_the_expectation(operator, plans):
    finished(operator, "deploy_workloads", [12, 12, 12, 12, 12])
    tenant = create(operator)
    start(tenant, "deploy_workloads")
    context = detail_context(tenant, "operator")
    assert context["progress"]["expected"] == pytest.approx(12.0, abs=0.05)
    rows = {row.step.step_id: row for row in context["steps"]}
    assert rows["deploy_workloads"].expected == "expected ~12s"
    assert rows["wait_ready"].expected.startswith("expected ~")
    from console import fragments

    html = fragments.detail_fragments(tenant, role="viewer")
    assert "expected ~12s" in html
