"""bench/engine.py and the no-op step set it runs on, which nothing else may select."""

import json
import subprocess
import sys

import psycopg
import pytest

from provisioning.steps import STEPS
from tests.conftest import ROOT, manage, owner_database_url, subprocess_env


@pytest.mark.django_db
@pytest.mark.parametrize(
    "env",
    [
        {},
        {"BENCHMARK": "0"},
        # Never on a database that is not a scratch one, whatever says "benchmark".
        {"BENCHMARK": "1", "DATABASE_URL": "postgres://nobody@127.0.0.1:1/console"},
    ],
)
def test_the_noop_step_set_is_refused_outside_a_benchmark(env):
    done = manage("check", PROVISIONING_STEP_SET="noop", **env)
    assert done.returncode != 0
    assert "PROVISIONING_STEP_SET=noop is for bench/engine.py only" in done.stderr


# Run in a process that says it is a benchmark: the saga's own engine, on the
# test database, with the no-op steps; one run asks wait_ready to wait 1 s.
DRIVE_NOOP_SAGA = """
import json
from provisioning import actions, engine
from provisioning.models import StepRun
from provisioning.steps import STEPS
from provisioning.steps.noop import wait_spec
from tests.conftest import drive

tenant = actions.create_tenant(
    slug="noop-bench", org="demo", plan="free", admin_email="a@example.com",
    faults=[wait_spec(1)],
)
outcome = drive(tenant)  # through the wait's park, as the pumps would
tenant.refresh_from_db()
steps = StepRun.objects.filter(run__tenant=tenant).order_by("position")
print(json.dumps({
    "outcome": outcome,
    "state": tenant.state,
    "classes": [type(step).__name__ for step in STEPS],
    "steps": [
        {"id": s.step_id, "status": s.status, "outputs": s.outputs,
         "seconds": (s.finished_at - s.started_at).total_seconds()}
        for s in steps
    ],
}))
"""


@pytest.mark.django_db(transaction=True)
def test_under_a_benchmark_the_same_nine_steps_do_nothing_but_the_asked_wait(plans):
    done = manage(
        "shell", "-c", DRIVE_NOOP_SAGA, BENCHMARK="1", PROVISIONING_STEP_SET="noop", DEBUG="1"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "succeeded"
    assert result["state"] == "active"  # mark_active's bookkeeping still runs
    assert set(result["classes"]) == {"NoopStep", "NoopWaitReady", "NoopMarkActive"}
    assert [s["id"] for s in result["steps"]] == [step.id for step in STEPS]
    assert all(s["status"] == "succeeded" for s in result["steps"])
    wait_ready = next(s for s in result["steps"] if s["id"] == "wait_ready")
    assert wait_ready["outputs"] == {"waited_s": 1.0}
    assert wait_ready["seconds"] >= 1.0
    # Nothing behind the others: no schema, network or container was made.
    others = [s for s in result["steps"] if s["id"] != "wait_ready"]
    assert all(s["outputs"] == {} and s["seconds"] < 1.0 for s in others)


@pytest.mark.cluster
@pytest.mark.broker
@pytest.mark.django_db
def test_the_engine_benchmark_runs_end_to_end_at_a_tiny_size(tmp_path):
    out = tmp_path / "engine.json"
    chart = tmp_path / "engine.png"
    try:
        import matplotlib  # noqa: F401

        chart_args = ["--chart", str(chart)]
    except ImportError:  # an optional extra (.[bench]); the run says so and goes on
        chart, chart_args = None, ["--no-chart"]
    done = subprocess.run(
        [sys.executable, "bench/engine.py", "--database-url", owner_database_url()]
        + ["--sagas", "3", "--workers", "1", "--brokers", "orm", "--single", "2"]
        + ["--parked", "2", "--parked-workers", "1", "--wait", "1", "--fresh-timeout", "30"]
        + ["--out", str(out), *chart_args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    (single,) = results["single"]
    assert single["n"] == 2 and single["failed"] == 0
    assert 0 < single["queue_wait_p50"] < single["saga_p50"]
    (run,) = results["throughput"]
    assert (run["broker"], run["workers"], run["succeeded"]) == ("orm", 1, 3)
    assert run["steps_per_s"] == pytest.approx(9 * run["sagas_per_s"])
    assert run["rss_idle_mb"] > 0 and run["rss_end_mb"] > 0
    (parked,) = results["parked"]
    assert parked["k"] == 2 and parked["in_wait_ready_peak"] >= 1
    assert parked["fresh_done"] and parked["fresh_s"] > 0
    assert "sagas/s" in done.stdout and "behind K sagas" in done.stdout
    if chart:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Its scratch databases are gone.
    with psycopg.connect(owner_database_url()) as conn:
        prefix = results["meta"]["scratch_databases"].rstrip("*")
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix]
        ).fetchall()
    assert left == []
