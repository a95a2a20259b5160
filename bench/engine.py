"""The saga engine's own cost: 9 steps that do nothing, through real qclusters.

    .venv/bin/python bench/engine.py [--sagas 300] [--workers 1,2,4] [--brokers orm,redis]
        [--single 50] [--parked 2,100,500] [--wait 30] [--profile]

It sets up its own world and takes it down again. A scratch database
``bench_<random>_tpl`` on the server of ``--database-url`` (default
$DATABASE_URL, else the embedded PostgreSQL under var/pgdata) is migrated once
and used as a template: every measurement gets a fresh copy (``CREATE
DATABASE ... TEMPLATE``), so no run inherits another's rows, queue or leases.
The steps are the no-op set (``PROVISIONING_STEP_SET=noop``, which the
settings allow only with ``BENCHMARK=1``, set here): same ids and labels,
nothing behind them, so what is measured is the engine, the ledger and the
queue. Each measurement starts a real ``manage.py qcluster`` on the ORM broker
or on Redis (``--redis-url``, default $REDIS_URL, else db 9 on 127.0.0.1;
skipped with a message when it does not answer).

Measurements (times from the database's timestamps unless said otherwise):

- **one saga at a time** (``--single``, with 2 workers on each broker): create
  one tenant with ``provisioning.actions.create_tenant`` as the console's view
  does, wait until its run is done, then the next. Reports the create call's
  latency (idle), the saga's time from create to done and its queue wait.
- **throughput** (``--sagas`` for each ``--workers`` and broker): create them
  back to back from one thread, wait until every run is done. Reports
  sagas/s and steps/s (first create to last finish), the create latency under
  that burst, and the qcluster's RSS (its whole process tree) at idle and at
  the end.
- **behind K parked sagas** (``--parked``, ``--wait``; 2 workers, ORM broker):
  K sagas whose wait_ready waits ``--wait`` seconds, then a fresh saga that
  does not wait; its time from create to done (bounded by ``--fresh-timeout``).
- **--profile**: ``engine.advance`` in this process under cProfile, counting
  queries and transactions per ledger write; then py-spy (if installed)
  sampling the qcluster's processes through one throughput run.

Results go to ``bench/results/engine-<date>.json`` and a chart of throughput
against workers to ``docs/engine-throughput.png`` (needs matplotlib: ``pip
install -e .[bench]``). Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import json
import os
import platform
import pstats
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import time_to_active as tta  # noqa: E402  (the scratch-database and CPU helpers)

ROOT = tta.ROOT
RESULTS_DIR = ROOT / "bench" / "results"
CHART = ROOT / "docs" / "engine-throughput.png"
DEFAULT_REDIS = "redis://127.0.0.1:6379/9"
STEPS_PER_SAGA = 9
POLL_SECONDS = 0.01
# A parked scenario counts its sagas as settled in wait_ready once the count
# stopped growing for this long (today's engine parks only one per worker).
SETTLE_SECONDS = 2.0
SETTLE_TIMEOUT = 120.0
STOP_GRACE = 10.0
# Figures measured with the peers on this machine (docs/PERFORMANCE.md), for the chart.
PEERS = {"DBOS 3.4": (25, 32), "Temporal dev server": (15, 17)}
TARGET_SAGAS_PER_S = 100


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float | None:
    return tta.nearest_rank(values, p) if values else None


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


# The process tree of a qcluster.


def tree_pids(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(child) for child in f.read().split()]
    return pids


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, in MB (shared pages counted per process)."""
    total_kb = 0
    for current in tree_pids(pid):
        with contextlib.suppress(OSError), open(f"/proc/{current}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


# The world one measurement runs in: a fresh database, a broker, a qcluster.


class Bench:
    def __init__(self, args, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.server = tta.server_url(args.database_url)
        self.base = f"bench_{secrets.token_hex(4)}"
        self.template = f"{self.base}_tpl"
        self.databases: list[str] = []
        self.count = 0
        self.env = {
            "BENCHMARK": "1",
            # DEBUG=0 as in production (DEBUG=1 records every query); the
            # settings then ask for these, which nothing here serves.
            "DEBUG": "0",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "127.0.0.1",
            "PROVISIONING_STEP_SET": "noop",
            "PROVISIONING_FAULTS_ENABLED": "0",
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "RESOURCE_NAMESPACE": f"bench{os.getpid()}-",
            # No step touches a workload; nothing may reach for Docker either.
            "WORKLOAD_DRIVER": "process",
            "VAR_DIR": str(tmp / "var"),
            "ROUTES_FILE": "",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }

    def create_template(self) -> None:
        tta.create_database(self.server, self.template)
        self.databases.append(self.template)
        # The settings start on the ORM broker; world() moves this process's
        # enqueues to the broker each measurement uses.
        os.environ.pop("REDIS_URL", None)
        tta.setup_django(
            {**self.env, "DATABASE_URL": tta.with_database(self.server, self.template)}
        )
        from django.core.management import call_command
        from django.db import connections
        from django.utils import timezone
        from django_q.models import Schedule

        call_command("migrate", verbosity=0, interactive=False)
        # The reconcile report inspects workloads, not the engine; at its first
        # due time it would run in the middle of a measurement.
        Schedule.objects.filter(func="provisioning.tasks.reconcile_report").update(
            next_run=timezone.now() + dt.timedelta(days=1)
        )
        connections.close_all()  # a template may have no sessions when it is copied

    def fresh_database(self) -> str:
        from django.db import connection, connections
        from psycopg import sql

        self.count += 1
        name = f"{self.base}_{self.count}"
        connections.close_all()
        with tta.admin_connection(self.server) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self.template)
                )
            )
        self.databases.append(name)
        # Every thread's connection reads this one dict: the next query opens on the copy.
        connection.settings_dict["NAME"] = name
        return name

    def drop(self, name: str) -> None:
        from django.db import connections

        connections.close_all()
        try:
            tta.drop_database(self.server, name)
            self.databases.remove(name)
        except Exception as exc:
            log(f"cleanup: dropping {name}: {exc}")

    def drop_all(self) -> None:
        for name in list(reversed(self.databases)):
            if self.args.keep_db:
                log(f"cleanup: kept database {name}")
            else:
                self.drop(name)

    @contextlib.contextmanager
    def world(self, broker: str, workers: int, *, cluster: bool = True):
        """A fresh database and broker queue, and (``cluster``) a running qcluster on them.

        Without ``cluster`` it yields a function that starts one (stopped by the caller).
        """
        from django_q.conf import Conf

        name = self.fresh_database()
        # django-q2 builds a broker from Conf on every enqueue: switching Conf
        # moves this process's create_tenant calls to the broker under test.
        Conf.ORM, Conf.REDIS = ("default", {}) if broker == "orm" else (None, self.args.redis_url)
        purge_queue()
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env.update(self.env, DATABASE_URL=tta.with_database(self.server, name))
        env["Q_WORKERS"] = str(workers)
        if broker == "redis":
            env["REDIS_URL"] = self.args.redis_url
        proc = None

        def start():
            started = tta.Cluster(env, self.tmp / f"qcluster-{name}-late.log")
            started.wait_running()
            return started

        try:
            if cluster:
                proc = tta.Cluster(env, self.tmp / f"qcluster-{name}.log")
                proc.wait_running()
            yield proc if cluster else start
        finally:
            if proc is not None:
                stop_cluster(proc)
            purge_queue()
            if not self.args.keep_db:
                self.drop(name)


def stop_cluster(cluster) -> None:
    """SIGTERM, then SIGKILL the whole group: a worker asleep in a wait would hold it up."""
    if cluster.proc.poll() is None:
        cluster.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.proc.wait(timeout=STOP_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(cluster.proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        cluster.proc.wait(timeout=5)
    cluster.log.close()


def purge_queue() -> None:
    from django_q.brokers import get_broker

    with contextlib.suppress(Exception):  # an empty database has nothing to purge yet
        get_broker().purge_queue()


def redis_answers(url: str) -> str | None:
    """None when Redis answers at ``url``, else why not."""
    import redis

    try:
        redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


# Sagas.


class Slugs:
    def __init__(self):
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"s{self.n:05d}"


def create(slug: str, faults=None) -> tuple[int, float]:
    """create_tenant as the console's view calls it; (tenant id, seconds the call took)."""
    from provisioning import actions

    started = time.perf_counter()
    tenant = actions.create_tenant(
        slug=slug,
        org="bench",
        plan="free",
        admin_email=f"admin@{slug}.example.com",
        faults=faults,
    )
    return tenant.pk, time.perf_counter() - started


def live_runs(tenant_ids=None) -> int:
    from provisioning.models import ProvisioningRun

    runs = ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE)
    if tenant_ids is not None:
        runs = runs.filter(tenant_id__in=tenant_ids)
    return runs.count()


def wait_done(tenant_ids, timeout: float, poll: float = POLL_SECONDS, cluster=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live_runs(tenant_ids) == 0:
            return True
        check_cluster(cluster)
        time.sleep(poll)
    return False


def check_cluster(cluster) -> None:
    """Stop at once when the qcluster went away (on a shared machine, someone may stop it)."""
    if cluster is None:
        return
    if cluster.proc.poll() is not None or " stopping." in cluster.log_path.read_text()[-2000:]:
        raise tta.BenchError(f"the qcluster stopped during the measurement:\n{cluster.tail(5)}")


def runs_of(tenant_ids) -> list:
    from provisioning.models import ProvisioningRun

    return list(
        ProvisioningRun.objects.filter(tenant_id__in=tenant_ids).values(
            "status", "created_at", "started_at", "finished_at"
        )
    )


def seconds(a, b) -> float | None:
    return None if a is None or b is None else (b - a).total_seconds()


def one_at_a_time(n: int, slugs: Slugs, timeout: float, cluster=None) -> dict:
    creates, sagas, waits, failed = [], [], [], 0
    for _ in range(n):
        tenant_id, took = create(slugs())
        wait_done([tenant_id], timeout, cluster=cluster)
        creates.append(took)
        (run,) = runs_of([tenant_id])
        if run["status"] != "succeeded":
            failed += 1
            continue
        sagas.append(seconds(run["created_at"], run["finished_at"]))
        waits.append(seconds(run["created_at"], run["started_at"]))
    return {
        "n": n,
        "failed": failed,
        "create_p50": pct(creates, 50),
        "create_p95": pct(creates, 95),
        "saga_p50": pct(sagas, 50),
        "saga_p95": pct(sagas, 95),
        "queue_wait_p50": pct(waits, 50),
        "queue_wait_p95": pct(waits, 95),
    }


def rates(ids: list[int], done: bool, *, since: str) -> dict:
    """sagas/s and steps/s of these runs: from the first one's ``since`` (created_at
    or started_at) to the last one's end; None unless every one succeeded."""
    from provisioning.models import StepRun

    rows = runs_of(ids)
    finished = [r for r in rows if r["status"] == "succeeded"]
    first = min((r[since] for r in rows if r[since]), default=None)
    last = max((r["finished_at"] for r in finished), default=None)
    wall = seconds(first, last) if done and len(finished) == len(ids) and first else None
    steps = StepRun.objects.filter(run__tenant_id__in=ids, status=StepRun.Status.SUCCEEDED).count()
    return {
        "n": len(ids),
        "succeeded": len(finished),
        "wall_s": wall,
        "sagas_per_s": len(ids) / wall if wall else None,
        "steps_per_s": steps / wall if wall else None,
    }


def throughput(n: int, slugs: Slugs, timeout: float, cluster) -> dict:
    rss_idle = tree_rss_mb(cluster.proc.pid)
    cpu = tta._cpu_times()
    cluster_cpu = tta._tree_cpu(cluster.proc.pid)
    ids, creates = [], []
    for _ in range(n):
        tenant_id, took = create(slugs())
        ids.append(tenant_id)
        creates.append(took)
    done = wait_done(ids, timeout, poll=0.1, cluster=cluster)
    after = tta._cpu_times()
    cluster_cpu_after = tta._tree_cpu(cluster.proc.pid)
    busy = None
    if cpu and after and after[0] > cpu[0]:
        busy = 1 - (after[1] - cpu[1]) / (after[0] - cpu[0])
    return {
        **rates(ids, done, since="created_at"),
        "create_p50": pct(creates, 50),
        "create_p95": pct(creates, 95),
        "submit_s": sum(creates),
        "rss_idle_mb": rss_idle,
        "rss_end_mb": tree_rss_mb(cluster.proc.pid),
        "cluster_cpu_s": (
            cluster_cpu_after - cluster_cpu
            if cluster_cpu is not None and cluster_cpu_after is not None
            else None
        ),
        "cpu_busy": busy,
    }


def backlog(n: int, slugs: Slugs, timeout: float, start_cluster) -> dict:
    """The engine alone: ``n`` sagas created while no worker runs, then a qcluster
    starts and works through them. sagas/s = n / first step started to last
    run finished (the creates, from this one thread, are not in it)."""
    ids = [create(slugs())[0] for _ in range(n)]
    cluster = start_cluster()
    try:
        cluster_cpu = tta._tree_cpu(cluster.proc.pid)
        done = wait_done(ids, timeout, poll=0.1, cluster=cluster)
        cluster_cpu_after = tta._tree_cpu(cluster.proc.pid)
        return {
            **rates(ids, done, since="started_at"),
            "rss_end_mb": tree_rss_mb(cluster.proc.pid),
            "cluster_cpu_s": (
                cluster_cpu_after - cluster_cpu
                if cluster_cpu is not None and cluster_cpu_after is not None
                else None
            ),
        }
    finally:
        stop_cluster(cluster)


def behind_parked(k: int, wait_s: float, slugs: Slugs, fresh_timeout: float, cluster) -> dict:
    from provisioning.models import StepRun
    from provisioning.steps.noop import wait_spec

    parked_now = StepRun.objects.filter(step_id="wait_ready", status=StepRun.Status.RUNNING)
    rss_one = None
    peak = 0
    started = time.monotonic()
    ids = []
    for i in range(k):
        ids.append(create(slugs(), faults=[wait_spec(wait_s)])[0])
        if i == 0:
            # The RSS with one saga in flight, the baseline for "flat memory".
            deadline = time.monotonic() + 10
            while not parked_now.exists() and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            peak = parked_now.count()
            rss_one = tree_rss_mb(cluster.proc.pid)
    submit_s = time.monotonic() - started
    # Settle: as many as the engine will hold in wait_ready at once, i.e. until
    # the count stops changing (or every one of them is done: a short wait).
    count, since = -1, time.monotonic()
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        now_count = parked_now.count()
        peak = max(peak, now_count)
        if now_count != count:
            count, since = now_count, time.monotonic()
        if count >= k:
            break
        if time.monotonic() - since >= SETTLE_SECONDS and (count or not live_runs(ids)):
            break
        time.sleep(0.05)
    rss_k = tree_rss_mb(cluster.proc.pid)
    fresh_id, _ = create(slugs())
    fresh_started = time.monotonic()
    done = wait_done([fresh_id], fresh_timeout, poll=0.05, cluster=cluster)
    (run,) = runs_of([fresh_id])
    # Then all K: from the first one's create to the last one's end.
    all_done = wait_done(ids, wait_s + 120, poll=0.2, cluster=cluster)
    rows = runs_of(ids)
    finished = [r for r in rows if r["status"] == "succeeded"]
    all_s = (
        seconds(min(r["created_at"] for r in rows), max(r["finished_at"] for r in finished))
        if all_done and len(finished) == k
        else None
    )
    return {
        "k": k,
        "wait_s": wait_s,
        "submit_s": submit_s,
        "in_wait_ready": count,  # when the fresh saga was submitted
        "in_wait_ready_peak": peak,
        "fresh_done": done and run["status"] == "succeeded",
        "fresh_s": seconds(run["created_at"], run["finished_at"]) if done else None,
        "fresh_timeout_s": fresh_timeout,
        "client_s": time.monotonic() - fresh_started,
        "rss_one_mb": rss_one,
        "rss_k_mb": rss_k,
        "all_k_s": all_s,
        "all_k_succeeded": len(finished),
    }


# Where the time goes.


OUTSIDE = "engine, outside the ledger"
LEDGER_CALLS = (
    "claim",
    "heartbeat",
    "cancel_requested",
    "run_started",
    "step_started",
    "step_succeeded",
    "step_progress",
    "step_log",
    "run_succeeded",
)


def advance_in_process(n: int, slugs: Slugs, *, profile: bool) -> dict:
    """``engine.advance`` for ``n`` new sagas in this process, with no queue in between.

    Plain (``profile`` False), it times the engine alone. With ``profile`` it
    runs under cProfile and tags every query of this thread's connection with
    the ledger call it belongs to, counting transactions: an outermost
    ``atomic()`` is one, and so is each statement run in autocommit. (The
    heartbeat thread's own connection is not counted: it beats every 3 s and a
    saga takes far less.)
    """
    from django.db import connection

    from provisioning import engine, ledger

    run_ids = [_latest_run_id(create(slugs())[0]) for _ in range(n)]
    tags: list[str] = []
    queries: Counter = Counter()
    kinds: Counter = Counter()
    transactions: Counter = Counter()
    calls: Counter = Counter()
    originals = {name: getattr(ledger, name) for name in LEDGER_CALLS}

    def tagged(name, func):
        def wrapper(*a, **kw):
            calls[name] += 1
            tags.append(name)
            try:
                return func(*a, **kw)
            finally:
                tags.pop()

        return wrapper

    def where() -> str:
        return tags[-1] if tags else OUTSIDE

    def count_queries(execute, sql, params, many, context):
        queries[where()] += 1
        kinds[sql.lstrip().split(None, 1)[0].upper()] += 1
        if not connection.in_atomic_block:
            transactions[where()] += 1  # autocommit: the statement is its own transaction
        return execute(sql, params, many, context)

    set_autocommit = connection.set_autocommit

    def counting_set_autocommit(autocommit, *a, **kw):
        if not autocommit:
            transactions[where()] += 1  # the outermost atomic() begins a transaction
        return set_autocommit(autocommit, *a, **kw)

    profiler = cProfile.Profile()
    durations = []
    with contextlib.ExitStack() as stack:
        if profile:
            for name in LEDGER_CALLS:
                setattr(ledger, name, tagged(name, originals[name]))
            connection.set_autocommit = counting_set_autocommit
            stack.callback(lambda: [setattr(ledger, k, v) for k, v in originals.items()])
            stack.callback(lambda: delattr(connection, "set_autocommit"))
            stack.enter_context(connection.execute_wrapper(count_queries))
        for run_id in run_ids:
            started = time.perf_counter()
            if profile:
                profiler.enable()
            outcome = engine.advance(run_id)
            if profile:
                profiler.disable()
            durations.append(time.perf_counter() - started)
            if outcome != "succeeded":
                raise tta.BenchError(f"in-process run {run_id}: {outcome}")
    row = {"n": n, "advance_p50": pct(durations, 50), "advance_p95": pct(durations, 95)}
    if not profile:
        return row
    stats = pstats.Stats(profiler)
    return {
        **row,
        "queries_per_saga": sum(queries.values()) / n,
        "transactions_per_saga": sum(transactions.values()) / n,
        "statements_per_saga": {k: v / n for k, v in kinds.most_common()},
        "by_call": {
            name: {
                "calls_per_saga": calls[name] / n,
                "queries_per_call": queries[name] / calls[name],
                "transactions_per_call": transactions[name] / calls[name],
            }
            for name in LEDGER_CALLS
            if calls[name]
        },
        "outside_ledger_per_saga": {
            "queries": queries[OUTSIDE] / n,
            "transactions": transactions[OUTSIDE] / n,
        },
        "top_cumulative": _top(stats, "cumulative", n),
        "top_self": _top(stats, "tottime", n),
    }


def _latest_run_id(tenant_id: int) -> int:
    from provisioning.models import ProvisioningRun

    return ProvisioningRun.objects.filter(tenant_id=tenant_id).latest("pk").pk


def _top(stats: pstats.Stats, key: str, n: int, limit: int = 15) -> list[dict]:
    rows = []
    for (path, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        rows.append(
            {
                "function": f"{_short(path)}:{line}({func})",
                "calls_per_saga": ncalls / n,
                "self_ms_per_saga": tottime / n * 1000,
                "cum_ms_per_saga": cumtime / n * 1000,
            }
        )
    field = "cum_ms_per_saga" if key == "cumulative" else "self_ms_per_saga"
    rows.sort(key=lambda row: row[field], reverse=True)
    return rows[:limit]


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# Leaf frames that are a process waiting, not working: left out of the shares.
IDLE = (
    "threading.py(",
    "time.sleep",
    "selectors.py",
    "multiprocessing/synchronize.py",
    "multiprocessing/connection.py",
    "queue.py(",
)
# django-q2's frames that every task sits under: no information in "inclusive".
CLUSTER_FRAMES = ("django_q/cluster.py", "django_q/management/", "django_q/worker.py(worker)")
CATEGORIES = (
    ("waiting for PostgreSQL's answer", ("psycopg/connection.py(Connection.wait)", "waiting.py")),
    ("psycopg (driver, protocol)", ("psycopg",)),
    ("Django ORM (query building, models)", ("django/db",)),
    ("django-q2 (broker, workers, pickling)", ("django_q",)),
    ("provisioning (engine, ledger, steps)", ("provisioning/",)),
    ("Django, other (signals, settings, utils)", ("django/",)),
    ("logging", ("logging/",)),
)


def pyspy_path() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start_pyspy(pid: int, out: Path):
    spy = pyspy_path()
    if spy is None:
        return None
    return subprocess.Popen(
        [spy, "record", "--subprocesses", "--nolineno", "-r", "200", "-f", "raw", "-o", str(out)]
        + ["-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_pyspy(proc, out: Path) -> dict | None:
    if proc is None:
        return None
    proc.send_signal(signal.SIGINT)  # py-spy writes what it sampled on Ctrl-C
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None
    if not out.exists():
        return None
    return summarise_stacks(out.read_text())


def summarise_stacks(raw: str) -> dict:
    """py-spy's collapsed stacks -> where the busy samples are, by category and function."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    categories: Counter = Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [_frame(frame) for frame in stack.split(";")]
        total += samples
        if any(marker in frames[-1] for marker in IDLE):
            idle += samples
            continue
        own[frames[-1]] += samples
        for name in set(frames):
            inclusive[name] += samples
        categories[_category(frames[-1])] += samples
    busy = total - idle
    if not busy:
        return {"samples": total, "busy_samples": 0}
    return {
        "samples": total,
        "busy_samples": busy,
        "categories": {k: v / busy for k, v in categories.most_common()},
        "top_self": [{"function": k, "share": v / busy} for k, v in own.most_common(15)],
        "top_inclusive": [
            {"function": k, "share": v / busy}
            for k, v in inclusive.most_common(80)
            if "provisioning/" in k or ("django_q" in k and not k.startswith(CLUSTER_FRAMES))
        ][:20],
    }


FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*)\)$")


def _frame(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{_short(match['path'])}({match['func']})"


def _category(leaf: str) -> str:
    for name, markers in CATEGORIES:
        if any(marker in leaf for marker in markers):
            return name
    return "other (stdlib: pickle, json, uuid, ...)"


# Reporting.


def print_report(results: dict) -> None:
    print()
    meta = results["meta"]
    print(f"bench/engine.py, {meta['date']}, {meta['cpus']} CPUs, commit {meta['commit']}")
    if meta.get("busy_before") is not None:
        print(f"before the run the machine's CPUs were {meta['busy_before']:.0%} busy")
    single = results["single"]
    if single:
        print("\none saga at a time (ms; saga = create to done, from the database)")
        print(
            f"{'broker':<7} {'W':>2} {'N':>4} {'create p50':>10} {'p95':>7} "
            f"{'saga p50':>9} {'p95':>7} {'queue wait p50':>14} {'p95':>7}"
        )
        for row in single:
            print(
                f"{row['broker']:<7} {row['workers']:>2} {row['n']:>4} "
                f"{ms(row['create_p50']):>10} {ms(row['create_p95']):>7} "
                f"{ms(row['saga_p50']):>9} {ms(row['saga_p95']):>7} "
                f"{ms(row['queue_wait_p50']):>14} {ms(row['queue_wait_p95']):>7}"
            )
    if results["throughput"]:
        print("\nthroughput (first create to last finish; create latency under the burst, ms)")
        print(
            f"{'broker':<7} {'W':>2} {'N':>4} {'ok':>4} {'sagas/s':>8} {'steps/s':>8} "
            f"{'wall s':>7} {'create p50':>10} {'p95':>7} {'RSS idle':>8} {'end MB':>7} "
            f"{'cpu':>5}"
        )
        for row in results["throughput"]:
            rate = f"{row['sagas_per_s']:.1f}" if row["sagas_per_s"] else "-"
            steps = f"{row['steps_per_s']:.0f}" if row["steps_per_s"] else "-"
            wall = f"{row['wall_s']:.1f}" if row["wall_s"] else "timeout"
            busy = f"{row['cpu_busy']:.0%}" if row["cpu_busy"] is not None else "-"
            print(
                f"{row['broker']:<7} {row['workers']:>2} {row['n']:>4} {row['succeeded']:>4} "
                f"{rate:>8} {steps:>8} {wall:>7} {ms(row['create_p50']):>10} "
                f"{ms(row['create_p95']):>7} {row['rss_idle_mb']:>8.0f} "
                f"{row['rss_end_mb']:>7.0f} {busy:>5}"
            )
    if results.get("backlog"):
        print(
            "\nthe engine alone: N sagas queued, then the workers start (first step to last finish)"
        )
        print(
            f"{'broker':<7} {'W':>2} {'N':>4} {'ok':>4} {'sagas/s':>8} {'steps/s':>8} {'wall s':>7}"
        )
        for row in results["backlog"]:
            rate = f"{row['sagas_per_s']:.1f}" if row["sagas_per_s"] else "-"
            steps = f"{row['steps_per_s']:.0f}" if row["steps_per_s"] else "-"
            wall = f"{row['wall_s']:.2f}" if row["wall_s"] else "timeout"
            print(
                f"{row['broker']:<7} {row['workers']:>2} {row['n']:>4} {row['succeeded']:>4} "
                f"{rate:>8} {steps:>8} {wall:>7}"
            )
    if results["parked"]:
        print("\na fresh saga behind K sagas waiting in wait_ready (ORM broker)")
        print(
            f"{'W':>2} {'K':>4} {'wait s':>6} {'in wait_ready':>13} {'fresh saga s':>12} "
            f"{'RSS 1 MB':>8} {'RSS K MB':>8} {'all K done s':>12}"
        )
        for row in results["parked"]:
            fresh = (
                f"{row['fresh_s']:.2f}"
                if row["fresh_done"]
                else f">{row['fresh_timeout_s']:.0f} (timeout)"
            )
            rss_one = f"{row['rss_one_mb']:.0f}" if row["rss_one_mb"] else "-"
            all_k = f"{row['all_k_s']:.1f}" if row.get("all_k_s") else "-"
            print(
                f"{row['workers']:>2} {row['k']:>4} {row['wait_s']:>6g} {row['in_wait_ready']:>13} "
                f"{fresh:>12} {rss_one:>8} {row['rss_k_mb']:>8.0f} {all_k:>12}"
            )
    profile = results.get("profile")
    if profile:
        inproc = profile["in_process"]
        plain = profile["in_process_plain"]
        print(
            f"\nwhere the time goes: engine.advance in this process, no queue: {plain['n']} "
            f"sagas p50 {ms(plain['advance_p50'])} ms, p95 {ms(plain['advance_p95'])} ms"
        )
        print(
            f"  per saga: {inproc['queries_per_saga']:.0f} queries in "
            f"{inproc['transactions_per_saga']:.0f} transactions; statements: "
            + ", ".join(f"{k} {v:.0f}" for k, v in inproc["statements_per_saga"].items())
        )
        for name, row in inproc["by_call"].items():
            print(
                f"  {name:<18} {row['calls_per_saga']:>5.1f}/saga  "
                f"{row['queries_per_call']:>4.1f} queries  "
                f"{row['transactions_per_call']:>4.1f} transactions per call"
            )
        out = inproc["outside_ledger_per_saga"]
        print(
            f"  outside the ledger: {out['queries']:.1f} queries, "
            f"{out['transactions']:.1f} transactions per saga"
        )
        print(f"  under cProfile (p50 {ms(inproc['advance_p50'])} ms), cumulative ms per saga:")
        for row in inproc["top_cumulative"][:12]:
            print(f"    {row['cum_ms_per_saga']:7.2f}  {row['function']}")
        spy = profile.get("workers")
        if spy and spy.get("samples"):
            print(
                f"\n  qcluster processes (py-spy, {spy['busy_samples']} busy of "
                f"{spy['samples']} samples), self time by category:"
            )
            for name, share in spy["categories"].items():
                print(f"    {share:6.1%}  {name}")
            print("  functions, self time:")
            for row in spy["top_self"][:10]:
                print(f"    {row['share']:6.1%}  {row['function']}")
            print("  engine and queue functions, inclusive:")
            for row in spy["top_inclusive"][:12]:
                print(f"    {row['share']:6.1%}  {row['function']}")
        elif profile.get("workers_note"):
            print(f"\n  qcluster processes: {profile['workers_note']}")


def write_chart(results: dict, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed (pip install -e .[bench])"
    rows = [r for r in results["throughput"] if r["sagas_per_s"]]
    if not rows:
        return "no chart: no throughput figures"
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    backlog = [r for r in results.get("backlog", []) if r["sagas_per_s"]]
    for broker in sorted({r["broker"] for r in rows}):
        mine = sorted((r["workers"], r["sagas_per_s"]) for r in rows if r["broker"] == broker)
        ax.plot(
            *zip(*mine, strict=True), marker="o", label=f"{broker} broker, burst from one client"
        )
        queued = sorted((r["workers"], r["sagas_per_s"]) for r in backlog if r["broker"] == broker)
        if queued:
            ax.plot(
                *zip(*queued, strict=True),
                marker="s",
                linestyle=":",
                label=f"{broker} broker, the engine alone (queued)",
            )
    for (name, (low, high)), colour in zip(PEERS.items(), ("tab:green", "tab:purple"), strict=True):
        ax.axhspan(low, high, color=colour, alpha=0.15, label=f"{name} (measured here)")
    ax.axhline(TARGET_SAGAS_PER_S, color="tab:red", linestyle="--", label="target, 2 workers")
    workers = sorted({r["workers"] for r in rows})
    ax.set_xticks(workers)
    ax.set_xlabel("django-q2 workers (Q_WORKERS)")
    ax.set_ylabel("sagas/s (9 no-op steps)")
    ax.set_ylim(
        0, max(TARGET_SAGAS_PER_S * 1.15, max(r["sagas_per_s"] for r in rows + backlog) * 1.15)
    )
    meta = results["meta"]
    busy = meta.get("busy_before")
    ax.set_title(
        f"Saga throughput, {rows[0]['n']} sagas, {meta['date']}, commit {meta['commit']}"
        + (
            f"\n({meta['cpus']} CPUs, {busy:.0%} busy with other work before the run)"
            if busy
            else ""
        ),
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"chart: {path}"


def machine_meta(busy_before) -> dict:
    from importlib.metadata import version

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    return {
        "date": dt.date.today().isoformat(),
        "commit": commit or "-",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "django": version("django"),
        "django_q2": version("django-q2"),
        "psycopg": version("psycopg"),
        "postgresql": pg,
        "busy_before": busy_before,
    }


# Main.


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("numbers must not be negative")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=300, help="sagas per throughput run (300)")
    parser.add_argument(
        "--workers", type=int_list, default=[1, 2, 4], help="Q_WORKERS values (1,2,4)"
    )
    parser.add_argument(
        "--brokers",
        default="orm,redis",
        help="orm, redis or both, comma-separated (orm,redis)",
    )
    parser.add_argument(
        "--single", type=int, default=50, help="sagas one at a time, per broker (50; 0: skip)"
    )
    parser.add_argument(
        "--parked",
        type=int_list,
        default=[2, 100, 500],
        help="K values: sagas waiting in wait_ready ahead of a fresh one (2,100,500; '': skip)",
    )
    parser.add_argument("--wait", type=float, default=30.0, help="their wait in seconds (30)")
    parser.add_argument(
        "--parked-workers", type=int, default=2, help="Q_WORKERS while they wait (2)"
    )
    parser.add_argument(
        "--fresh-timeout",
        type=float,
        help="how long to wait for the fresh saga (default: the wait plus 30 s)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile (cProfile in process, py-spy)"
    )
    parser.add_argument("--profile-sagas", type=int, default=50, help="sagas profiled (50)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per throughput run (600 s)")
    parser.add_argument(
        "--database-url",
        help="server for the scratch databases (default: $DATABASE_URL, else the embedded one)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or DEFAULT_REDIS,
        help=f"Redis for the Redis broker (default: $REDIS_URL, else {DEFAULT_REDIS})",
    )
    parser.add_argument(
        "--out", type=Path, help="results JSON (default bench/results/engine-<date>.json)"
    )
    parser.add_argument(
        "--chart", type=Path, default=CHART, help=f"chart PNG (default {CHART.relative_to(ROOT)})"
    )
    parser.add_argument("--no-chart", action="store_true", help="write no chart")
    parser.add_argument("--keep-db", action="store_true", help="keep the scratch databases")
    args = parser.parse_args(argv)
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if not set(args.brokers) <= {"orm", "redis"}:
        parser.error("--brokers takes orm and/or redis")
    if args.sagas < 0 or args.single < 0 or args.wait < 0:
        parser.error("--sagas, --single and --wait must not be negative")
    if 0 in args.workers or args.parked_workers < 1:
        parser.error("--workers and --parked-workers must be at least 1")
    if args.fresh_timeout is None:
        args.fresh_timeout = args.wait + 30
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    bench = Bench(args, tmp)
    results: dict = {
        "args": {},
        "single": [],
        "throughput": [],
        "backlog": [],
        "parked": [],
        "skipped": [],
    }
    try:
        busy_before = tta.busy_share(tta.BUSY_SAMPLE_SECONDS)
        bench.create_template()
        results["meta"] = {**machine_meta(busy_before), "scratch_databases": f"{bench.base}_*"}
        results["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        brokers = list(args.brokers)
        if "redis" in brokers:
            why = redis_answers(args.redis_url)
            if why:
                log(f"skipping the Redis broker: {args.redis_url} does not answer ({why})")
                results["skipped"].append(f"redis: {why}")
                brokers.remove("redis")
        slugs = Slugs()
        for broker in brokers:
            if args.single:
                log(f"{broker}: {args.single} sagas one at a time, 2 workers")
                with bench.world(broker, 2) as cluster:
                    one_at_a_time(3, slugs, 30, cluster)  # warm the workers' connections
                    row = one_at_a_time(args.single, slugs, 60, cluster)
                results["single"].append({"broker": broker, "workers": 2, **row})
            for workers in args.workers if args.sagas else []:
                log(f"{broker}: {args.sagas} sagas, {workers} worker(s)")
                with bench.world(broker, workers) as cluster:
                    one_at_a_time(workers + 1, slugs, 30, cluster)  # warm every worker
                    row = throughput(args.sagas, slugs, args.timeout, cluster)
                results["throughput"].append({"broker": broker, "workers": workers, **row})
                log(f"{broker}: {args.sagas} sagas queued, then {workers} worker(s) start")
                with bench.world(broker, workers, cluster=False) as start_cluster:
                    row = backlog(args.sagas, slugs, args.timeout, start_cluster)
                results["backlog"].append({"broker": broker, "workers": workers, **row})
        for k in args.parked:
            workers = args.parked_workers
            log(f"orm: a fresh saga behind {k} sagas waiting {args.wait:g}s, {workers} worker(s)")
            with bench.world("orm", workers) as cluster:
                one_at_a_time(workers + 1, slugs, 30, cluster)
                row = behind_parked(k, args.wait, slugs, args.fresh_timeout, cluster)
            results["parked"].append({"broker": "orm", "workers": workers, **row})
        if args.profile:
            results["profile"] = run_profile(bench, args, slugs)
        print_report(results)
        out = args.out or RESULTS_DIR / f"engine-{results['meta']['date']}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"results: {out}")
        if not args.no_chart:
            log(write_chart(results, args.chart))
        failed = [r for r in results["throughput"] + results["backlog"] if r["succeeded"] != r["n"]]
        failed += [r for r in results["single"] if r["failed"]]
        return 1 if failed else 0
    except tta.BenchError as exc:
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C waits
        try:
            bench.drop_all()
        finally:
            signal.signal(signal.SIGINT, previous)
            shutil.rmtree(tmp, ignore_errors=True)


def run_profile(bench: Bench, args, slugs: Slugs) -> dict:
    log(f"profile: engine.advance in this process, {args.profile_sagas} sagas")
    with bench.world("orm", 2, cluster=False):
        advance_in_process(3, slugs, profile=False)  # warm imports and caches
        plain = advance_in_process(args.profile_sagas, slugs, profile=False)
        counted = advance_in_process(args.profile_sagas, slugs, profile=True)
    profile: dict = {"in_process_plain": plain, "in_process": counted}
    if pyspy_path() is None:
        profile["workers_note"] = "py-spy is not installed (pip install -e .[bench])"
        return profile
    log(f"profile: py-spy on the qcluster, {args.sagas or 300} sagas, 2 workers, ORM broker")
    with bench.world("orm", 2) as cluster:
        one_at_a_time(3, slugs, 30, cluster)
        out = bench.tmp / "pyspy.txt"
        spy = start_pyspy(cluster.proc.pid, out)
        time.sleep(1)  # py-spy attaches to every process of the tree first
        row = throughput(args.sagas or 300, slugs, args.timeout, cluster)
        profile["workers"] = stop_pyspy(spy, out)
        profile["workers_throughput"] = row  # slowed by the sampling: not a figure to quote
    return profile


if __name__ == "__main__":
    sys.exit(main())
