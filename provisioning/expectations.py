"""How long a step is expected to take, from the history of finished steps.

Per step and plan: the median and the 95th percentile of the durations of the
last ``PROVISIONING_EXPECTATION_WINDOW`` successful runs of that step on that
plan (``finished_at - started_at`` of the step row, so retries inside one
attempt count). Before there are ``PROVISIONING_EXPECTATION_MIN_SAMPLES``
samples, defaults measured on the local process driver and a local Docker
Engine stand in.

The median drives the progress bar's interpolation and the "expected ~Xs"
hint; the p95 drives stall detection (``provisioning.stall``). Each process
caches a plan's numbers for ``PROVISIONING_EXPECTATION_CACHE_SECONDS``, so a
page render or a heartbeat costs at most one query per plan per interval.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from provisioning.steps import BY_ID

# Seconds for a one-replica plan; per-replica work is added below.
BASE_SECONDS = {
    "validate": 0.3,
    "allocate_storage": 0.5,
    "allocate_identity": 0.5,
    "allocate_network": 1.0,
    "seed_schema": 0.8,
    "deploy_workloads": 2.0,
    "wait_ready": 1.5,
    "mark_active": 0.5,
    "send_welcome_emails": 1.0,
}
PER_REPLICA_SECONDS = {"deploy_workloads": 1.5, "wait_ready": 1.0}
DEFAULT_SECONDS = 2.0
MIN_SECONDS = 0.2
# Without history, the p95 is this multiple of the default median.
DEFAULT_P95_RATIO = 2.5


@dataclass(frozen=True)
class Expectation:
    median: float
    p95: float
    samples: int
    source: str  # "history" or "default"

    def as_dict(self) -> dict:
        return {
            "median_s": round(self.median, 2),
            "p95_s": round(self.p95, 2),
            "samples": self.samples,
            "source": self.source,
        }


_cache: dict[int | None, tuple[float, dict[str, list[float]]]] = {}
_lock = threading.Lock()

HISTORY_SQL = """
SELECT step_id, secs FROM (
    SELECT s.step_id,
           EXTRACT(EPOCH FROM (s.finished_at - s.started_at))::float8 AS secs,
           row_number() OVER (PARTITION BY s.step_id ORDER BY s.finished_at DESC, s.id DESC) AS rn
      FROM provisioning_steprun s
      JOIN provisioning_provisioningrun r ON r.id = s.run_id
      JOIN tenants_tenant t ON t.id = r.tenant_id
     WHERE s.status = 'succeeded'
       AND r.kind = 'provision'
       AND t.plan_id = %s
       AND s.started_at IS NOT NULL
       AND s.finished_at IS NOT NULL
) recent
WHERE rn <= %s
"""


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def _history(plan_id: int | None) -> dict[str, list[float]]:
    """Recent successful durations per step on a plan, cached per process."""
    if plan_id is None:
        return {}
    now = time.monotonic()
    ttl = settings.PROVISIONING_EXPECTATION_CACHE_SECONDS
    with _lock:
        hit = _cache.get(plan_id)
        if hit and now - hit[0] < ttl:
            return hit[1]
    durations: dict[str, list[float]] = {}
    with connection.cursor() as cursor:
        cursor.execute(HISTORY_SQL, [plan_id, settings.PROVISIONING_EXPECTATION_WINDOW])
        for step_id, secs in cursor.fetchall():
            durations.setdefault(step_id, []).append(max(0.0, float(secs)))
    with _lock:
        _cache[plan_id] = (now, durations)
    return durations


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def default_seconds(step_id: str, plan=None) -> float:
    """The stand-in before there is history: never above the step's budget."""
    seconds = BASE_SECONDS.get(step_id, DEFAULT_SECONDS)
    replicas = max(1, int(getattr(plan, "replicas", 1) or 1))
    seconds += PER_REPLICA_SECONDS.get(step_id, 0.0) * (replicas - 1)
    step = BY_ID.get(step_id)
    if step is not None and plan is not None:
        _, budget = step.budget(plan, strict=False)
        seconds = min(seconds, budget)
    return max(MIN_SECONDS, float(seconds))


def expectation(step_id: str, plan=None) -> Expectation:
    """Median and p95 of ``step_id`` on ``plan``: from history, else defaults."""
    samples = _history(getattr(plan, "pk", None)).get(step_id, [])
    if len(samples) >= max(1, settings.PROVISIONING_EXPECTATION_MIN_SAMPLES):
        median = max(MIN_SECONDS, percentile(samples, 0.5))
        p95 = max(median, percentile(samples, 0.95))
        return Expectation(median, p95, len(samples), "history")
    median = default_seconds(step_id, plan)
    return Expectation(median, median * DEFAULT_P95_RATIO, len(samples), "default")


def expected_seconds(step_id: str, plan=None) -> float:
    """Typical (median) duration of ``step_id`` on ``plan``, for the progress bar."""
    return expectation(step_id, plan).median
