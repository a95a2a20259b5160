"""Prometheus metrics computed from the database at each scrape (a custom collector).

Every figure comes from rows every process shares, so any daphne process
answers a scrape with the same values, and a worker that dies loses nothing:
no multiprocess directory, no per-process counters to add up. Counters count
append-only audit events or runs (never deleted), so they only go up, as
Prometheus expects; a histogram is counted from the events that carry its
observation (``step_completed`` holds ``duration_s``).

A scrape costs six aggregate queries; ``bench``-sized installations (tens of
thousands of events) answer in milliseconds (docs/OPERATIONS.md).
"""

from __future__ import annotations

from django.db import connection
from django.db.models import Count
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from provisioning.models import AuditEvent, ProvisioningRun, WorkloadHealth
from provisioning.steps import STEP_IDS
from tenants.models import STATES, Plan, Tenant

# Steps take from milliseconds (validate) to minutes (a cluster's readiness).
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

EVENTS = AuditEvent._meta.db_table
RUNS = ProvisioningRun._meta.db_table
TENANTS = Tenant._meta.db_table
PLANS = Plan._meta.db_table


def _buckets_sql(expression: str, buckets) -> str:
    return ", ".join(f"count(*) FILTER (WHERE {expression} <= {float(b)!r})" for b in buckets)


def _histogram(family: HistogramMetricFamily, labels: list[str], row, buckets) -> None:
    """``row``: count, sum, then one cumulative count per bucket."""
    count, total, *cumulative = row
    points = [(repr(float(b)), n) for b, n in zip(buckets, cumulative, strict=True)]
    points.append(("+Inf", count))
    family.add_metric(labels, points, total or 0.0)


def step_durations() -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "provisioning_step_duration_seconds",
        "How long each finished step took (step_completed events), by step and plan.",
        labels=["step", "plan"],
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT e.details->>'step', p.name, count(*), sum(e.d),
                   {_buckets_sql("e.d", STEP_BUCKETS)}
              FROM (SELECT tenant_id, details, (details->>'duration_s')::float AS d
                      FROM {EVENTS}
                     WHERE type = 'tenant.provisioning.step_completed'
                       AND details->>'duration_s' IS NOT NULL) e
              JOIN {TENANTS} t ON t.id = e.tenant_id
              JOIN {PLANS} p ON p.id = t.plan_id
             GROUP BY 1, 2 ORDER BY 1, 2
            """  # noqa: S608 (table names from the models, bucket bounds are floats)
        )
        for step, plan, *row in cursor.fetchall():
            _histogram(family, [step, plan], row, STEP_BUCKETS)
    return family


def queue_waits() -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "provisioning_queue_wait_seconds",
        "From a run's creation (the operator's request) to a worker starting it, by kind.",
        labels=["kind"],
    )
    wait = "extract(epoch FROM started_at - created_at)"
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT kind, count(*), sum({wait}), {_buckets_sql(wait, QUEUE_BUCKETS)}
              FROM {RUNS} WHERE started_at IS NOT NULL GROUP BY 1 ORDER BY 1
            """  # noqa: S608
        )
        for kind, *row in cursor.fetchall():
            _histogram(family, [kind], row, QUEUE_BUCKETS)
    return family


def runs() -> tuple[CounterMetricFamily, GaugeMetricFamily]:
    finished = CounterMetricFamily(
        "provisioning_runs",
        "Finished runs by kind (provision, decommission) and outcome "
        "(succeeded, failed, cancelled).",
        labels=["kind", "outcome"],
    )
    in_flight = GaugeMetricFamily(
        "provisioning_runs_in_flight",
        "Runs queued, running or compensating now (parked ones included).",
    )
    Status = ProvisioningRun.Status
    counts = {
        (kind, outcome): 0
        for kind in ProvisioningRun.Kind.values
        for outcome in ("succeeded", "failed", "cancelled")
    }
    live = 0
    rows = ProvisioningRun.objects.values_list("kind", "status", "cancelled")
    for kind, status, cancelled, n in rows.annotate(n=Count("id")).order_by():
        if status in ProvisioningRun.LIVE:
            live += n
        elif status == Status.SUCCEEDED:
            counts[kind, "succeeded"] += n
        else:
            counts[kind, "cancelled" if cancelled else "failed"] += n
    for (kind, outcome), n in sorted(counts.items()):
        finished.add_metric([kind, outcome], n)
    in_flight.add_metric([], live)
    return finished, in_flight


def event_counters() -> tuple[CounterMetricFamily, CounterMetricFamily]:
    retries = CounterMetricFamily(
        "provisioning_step_retries",
        "Step attempts that failed and were retried (step_retrying events), by step.",
        labels=["step"],
    )
    stalls = CounterMetricFamily(
        "provisioning_stalls",
        "Steps that ran well past their expected duration (stalled events), by step.",
        labels=["step"],
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT type, coalesce(details->>'step', ''), count(*) FROM {EVENTS}
             WHERE type IN ('tenant.provisioning.step_retrying', 'tenant.provisioning.stalled')
             GROUP BY 1, 2 ORDER BY 1, 2
            """  # noqa: S608
        )
        rows = cursor.fetchall()
    counts = {key: dict.fromkeys(STEP_IDS, 0) for key in ("retries", "stalls")}
    for type_, step, n in rows:
        key = "retries" if type_.endswith("step_retrying") else "stalls"
        counts[key][step] = counts[key].get(step, 0) + n
    # Every step, zeros included: a series that appears only at its first
    # increment hides that increment from increase() and rate().
    for family, key in ((retries, "retries"), (stalls, "stalls")):
        for step, n in counts[key].items():
            family.add_metric([step], n)
    return retries, stalls


def tenants() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    by_state = GaugeMetricFamily("tenants", "Tenants by state.", labels=["state"])
    counts = dict.fromkeys(STATES, 0)
    for state, n in Tenant.objects.values_list("state").annotate(n=Count("id")).order_by():
        counts[state] = n
    for state in STATES:
        by_state.add_metric([state], counts[state])
    healthy = GaugeMetricFamily(
        "tenant_replicas_healthy",
        "An active tenant's replicas that answered the repair loop's last check.",
        labels=["tenant", "plan"],
    )
    expected = GaugeMetricFamily(
        "tenant_replicas_expected",
        "The replicas an active tenant's plan asks for (what the repair loop expects).",
        labels=["tenant", "plan"],
    )
    rows = (
        WorkloadHealth.objects.filter(tenant__state=Tenant.State.ACTIVE)
        .values_list("tenant__slug", "tenant__plan__name", "healthy", "expected")
        .order_by("tenant__slug")
    )
    for slug, plan, n_healthy, n_expected in rows:
        healthy.add_metric([slug, plan], n_healthy)
        expected.add_metric([slug, plan], n_expected)
    return by_state, healthy, expected


class DatabaseCollector(Collector):
    """Every family, read from the database at each scrape."""

    def describe(self):
        return []  # no query when the registry registers it

    def collect(self):
        yield step_durations()
        yield queue_waits()
        yield from runs()
        yield from event_counters()
        yield from tenants()
