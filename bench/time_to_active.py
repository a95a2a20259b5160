"""Time from submit to active for free tenants on the Docker driver (or a Docker Swarm).

    .venv/bin/python bench/time_to_active.py [--n 20] [--workers 2] [--database-url URL]
    .venv/bin/python bench/time_to_active.py --driver swarm --phase one-at-a-time

It sets up its own world and takes it down again:

- a scratch database ``bench_<random>`` on the server of ``--database-url``
  (default: $DATABASE_URL, else the embedded PostgreSQL under var/pgdata that
  the project's settings start), migrated in this process;
- ``RESOURCE_NAMESPACE=bench<pid>-``, so every container and network it makes
  is named ``tpc-bench<pid>-...`` and nothing else on the engine is touched;
- ``WORKLOAD_DRIVER=docker`` (it stops with a message if no engine answers);
  with ``--driver swarm``, a two-node Docker Swarm of its own and its
  registry (``tests/swarm_support.SwarmLab``, as the swarm tests use: two
  dockerd in network namespaces, Debian's docker-registry; root only),
  removed afterwards;
- a real ``manage.py qcluster`` (ORM broker, ``Q_WORKERS=--workers``).

After ``--warmup`` unmeasured tenants it measures two phases:

1. one at a time: create a tenant with ``provisioning.actions.create_tenant``,
   poll the database every 20 ms until it is active, then the next one;
2. at once: decommission phase 1's tenants (an engine with Docker's default
   address pools has room for about 30 networks, one per tenant), then create
   N tenants as fast as one thread can and wait for all of them.

"submit -> active" is ``activated_at - created_at`` from the database (both
stamped on this machine); "client" is what this script saw, from the call to
``create_tenant`` to the poll that found the tenant active. For each phase it
prints median, p95 (nearest rank) and max, the wall time, how busy the
machine's CPUs were, how many PostgreSQL sessions were opened, and where the
time went (queue wait, per-step medians, gaps between steps).

Files the console writes (locks, welcome emails, the route table) go to a
temporary VAR_DIR. Afterwards it removes every container and network under
its namespace, stops the cluster, drops the scratch database and deletes the
temporary directory, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POLL_SECONDS = 0.02
CLUSTER_START_TIMEOUT = 60.0
CLUSTER_STOP_TIMEOUT = 20.0
# With no default-address-pools in daemon.json, the engine has 31 subnets for
# bridge networks (172.17-31.0.0/16 and 192.168.0.0/16 in /20s), docker0 included.
DEFAULT_POOL_NETWORKS = 31
DEFAULT_SETTINGS = "console.settings"
BUSY_SAMPLE_SECONDS = 2.0


class BenchError(Exception):
    """A set-up problem, reported as one line."""


# The scratch database.


def server_url(cli_url: str | None) -> str:
    url = cli_url or os.environ.get("DATABASE_URL", "")
    if url:
        return url
    from console.database import embedded_url

    var_dir = Path(os.environ.get("VAR_DIR", ROOT / "var"))
    return embedded_url(var_dir / "pgdata")


def with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path="/" + name))


def admin_connection(url: str):
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise BenchError(f"cannot connect to {url}: {exc}".strip()) from exc


def create_database(url: str, name: str) -> None:
    from psycopg import sql

    with admin_connection(url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(url: str, name: str) -> None:
    from psycopg import sql

    with admin_connection(url) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def setup_django(env: dict) -> None:
    os.environ.update(env)
    import logging

    import django

    django.setup()
    # django-q2 logs every enqueue at INFO in this process; keep the output to the figures.
    logging.getLogger("django-q").setLevel(logging.WARNING)


# Docker.


def docker_client():
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        raise BenchError(
            f"no Docker Engine answers ({exc.__class__.__name__}: {exc}); "
            "this benchmark needs one (start dockerd, or set DOCKER_HOST)"
        ) from exc
    return client


def remove_namespace(client, prefix: str) -> tuple[int, int]:
    """Remove services, containers, then networks named ``prefix*``; (containers, networks)."""
    import docker.errors

    containers = networks = 0
    with contextlib.suppress(docker.errors.APIError):  # (an engine that is no swarm manager)
        for service in client.services.list(filters={"name": prefix}):
            if service.name.startswith(prefix):
                with contextlib.suppress(docker.errors.NotFound):
                    service.remove()
                    containers += 1
    for container in client.containers.list(all=True, filters={"name": prefix}):
        if container.name.startswith(prefix):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
                containers += 1
    for network in client.networks.list(names=[prefix]):
        if network.name.startswith(prefix):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
                networks += 1
    return containers, networks


def warn_network_room(client, needed: int) -> None:
    bridges = [n for n in client.networks.list() if n.attrs.get("Driver") == "bridge"]
    if len(bridges) + needed > DEFAULT_POOL_NETWORKS:
        print(
            f"warning: the engine has {len(bridges)} bridge networks and this run needs "
            f"{needed} more at once; with Docker's default address pools only "
            f"{DEFAULT_POOL_NETWORKS} fit, so allocate_network may fail with "
            "'could not find an available, non-overlapping IPv4 address pool'",
            file=sys.stderr,
        )


# Measuring.


@dataclass
class Sample:
    tenant_id: int
    slug: str
    submitted: float  # time.monotonic() just before create_tenant
    seen_active: float | None = None
    state: str = "provisioning"
    server_s: float | None = None  # activated_at - created_at

    @property
    def client_s(self) -> float | None:
        return None if self.seen_active is None else self.seen_active - self.submitted


@dataclass
class Phase:
    name: str
    samples: list[Sample] = field(default_factory=list)
    wall: float = math.inf
    submitting: float | None = None  # at once: seconds to submit them all
    cpu_busy: float | None = None  # share of all CPUs busy during the phase, 0..1
    sessions: int | None = None  # PostgreSQL sessions opened on the scratch database
    cluster_cpu: float | None = None  # CPU seconds used by the qcluster's processes


class Counters:
    """Machine CPU, the cluster's CPU and the database's sessions, before and after a phase."""

    def __init__(self, cluster_pid: int):
        self.cluster_pid = cluster_pid
        self.cpu = _cpu_times()
        self.cluster_cpu = _tree_cpu(cluster_pid)
        self.sessions = _sessions()

    def finish(self, phase: Phase) -> None:
        cpu = _cpu_times()
        if cpu and self.cpu and cpu[0] > self.cpu[0]:
            phase.cpu_busy = 1 - (cpu[1] - self.cpu[1]) / (cpu[0] - self.cpu[0])
        cluster_cpu = _tree_cpu(self.cluster_pid)
        if cluster_cpu is not None and self.cluster_cpu is not None:
            phase.cluster_cpu = cluster_cpu - self.cluster_cpu
        sessions = _sessions()
        if sessions is not None and self.sessions is not None:
            phase.sessions = sessions - self.sessions


def busy_share(seconds: float) -> float | None:
    """How busy the machine's CPUs are over ``seconds``, 0..1 (before we start anything)."""
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    if not before or not after or after[0] <= before[0]:
        return None
    return 1 - (after[1] - before[1]) / (after[0] - before[0])


def _tree_cpu(pid: int) -> float | None:
    """CPU seconds of ``pid`` and its live descendants (and the children they reaped)."""
    ticks = 0
    todo = [pid]
    try:
        while todo:
            current = todo.pop()
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(child) for child in f.read().split()]
    except (OSError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def _cpu_times() -> tuple[int, int] | None:
    """(all, idle) jiffies from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(values[:8]), values[3] + values[4]  # idle + iowait


def _sessions() -> int | None:
    """Sessions ever opened on this database (PostgreSQL 14+; flushed within a second)."""
    from django.db import DatabaseError, connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            )
            row = cursor.fetchone()
    except DatabaseError:
        return None
    return int(row[0]) if row and row[0] is not None else None


def submit(slug: str) -> Sample:
    from provisioning import actions

    started = time.monotonic()
    tenant = actions.create_tenant(
        slug=slug, org="bench", plan="free", admin_email=f"admin@{slug}.example.com"
    )
    return Sample(tenant_id=tenant.pk, slug=slug, submitted=started)


def poll(samples: list[Sample], timeout: float) -> None:
    """Poll until every sample is active or failed, or ``timeout`` passes."""
    from tenants.models import Tenant

    pending = {s.tenant_id: s for s in samples if s.seen_active is None}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        rows = Tenant.objects.filter(pk__in=list(pending)).values_list(
            "pk", "state", "created_at", "activated_at"
        )
        now = time.monotonic()
        for pk, state, created_at, activated_at in rows:
            sample = pending[pk]
            sample.state = state
            if state == Tenant.State.ACTIVE:
                sample.seen_active = now
                sample.server_s = (activated_at - created_at).total_seconds()
                del pending[pk]
            elif state == Tenant.State.FAILED:
                del pending[pk]
        if pending:
            time.sleep(POLL_SECONDS)


def one_at_a_time(name: str, prefix: str, n: int, timeout: float, cluster_pid: int) -> Phase:
    phase = Phase(name)
    counters = Counters(cluster_pid)
    first = time.monotonic()
    for i in range(n):
        sample = submit(f"{prefix}-{i:03d}")
        poll([sample], timeout)
        phase.samples.append(sample)
        status = f"{sample.server_s:.3f}s" if sample.server_s is not None else sample.state
        print(f"  {sample.slug}: {status}", file=sys.stderr, flush=True)
    phase.wall = time.monotonic() - first
    counters.finish(phase)
    return phase


def all_at_once(name: str, prefix: str, n: int, timeout: float, cluster_pid: int) -> Phase:
    phase = Phase(name)
    counters = Counters(cluster_pid)
    first = time.monotonic()
    phase.samples = [submit(f"{prefix}-{i:03d}") for i in range(n)]
    phase.submitting = time.monotonic() - first
    poll(phase.samples, timeout)
    seen = [s.seen_active for s in phase.samples if s.seen_active is not None]
    if len(seen) == n:
        phase.wall = max(seen) - first
    counters.finish(phase)
    return phase


def decommission(samples: list[Sample], timeout: float) -> tuple[int, int, float]:
    """Decommission the samples' tenants through the workers: (done, asked, seconds)."""
    from provisioning import actions
    from provisioning.models import ProvisioningRun
    from tenants.models import Tenant

    started = time.monotonic()
    deadline = started + timeout
    every = [s.tenant_id for s in samples]
    # A tenant is active before its run ends (send_welcome_emails comes after
    # mark_active), and a second live run is refused: let the runs finish.
    live = ProvisioningRun.objects.filter(tenant_id__in=every, status__in=ProvisioningRun.LIVE)
    while live.exists() and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    ids = []
    for tenant in Tenant.objects.filter(pk__in=every):
        if tenant.state in (Tenant.State.ACTIVE, Tenant.State.FAILED):
            try:
                actions.decommission_tenant(tenant, reason="bench")
            except Exception as exc:  # the namespace sweep after this removes it anyway
                print(f"  decommission {tenant.slug}: {exc}", file=sys.stderr)
                continue
            ids.append(tenant.pk)
    done = 0
    while time.monotonic() < deadline:
        done = Tenant.objects.filter(pk__in=ids, state=Tenant.State.DECOMMISSIONED).count()
        if done == len(ids):
            break
        time.sleep(POLL_SECONDS * 5)
    return done, len(ids), time.monotonic() - started


def nearest_rank(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def breakdown(samples: list[Sample]) -> dict:
    """Where the active tenants' time went, in medians of seconds."""
    from provisioning.models import ProvisioningRun, StepRun
    from provisioning.steps import STEP_IDS

    active_upto = STEP_IDS.index("mark_active") + 1
    runs = ProvisioningRun.objects.filter(
        tenant_id__in=[s.tenant_id for s in samples if s.server_s is not None],
        kind=ProvisioningRun.Kind.PROVISION,
        attempt=1,
    )
    steps: dict[str, list[float]] = {step: [] for step in STEP_IDS}
    queue_wait, claim_to_first, step_sums, gaps = [], [], [], []
    for run in runs:
        if run.started_at is None:
            continue
        queue_wait.append((run.started_at - run.created_at).total_seconds())
        done = [
            r
            for r in StepRun.objects.filter(run=run).order_by("position")
            if r.started_at and r.finished_at
        ]
        for row in done:
            steps[row.step_id].append((row.finished_at - row.started_at).total_seconds())
        upto = [r for r in done if r.position <= active_upto]
        if upto:
            claim_to_first.append((upto[0].started_at - run.started_at).total_seconds())
            step_sums.append(sum((r.finished_at - r.started_at).total_seconds() for r in upto))
            gaps.append(
                sum(
                    (b.started_at - a.finished_at).total_seconds()
                    for a, b in zip(upto, upto[1:], strict=False)
                )
            )

    def median(values):
        return statistics.median(values) if values else None

    return {
        "queue_wait": median(queue_wait),
        "queue_wait_max": max(queue_wait, default=None),
        "claim_to_first_step": median(claim_to_first),
        "steps": {step: median(values) for step, values in steps.items() if values},
        "steps_to_active": median(step_sums),
        "gaps_between_steps": median(gaps),
    }


# Reporting.


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "timeout"
    return f"{value:.{digits}f}"


def report(args, phases: list[Phase], busy_before: float | None) -> None:
    print()
    print(f"time to active, free plan, {args.driver} driver, Q_WORKERS={args.workers}, seconds")
    if args.settings != DEFAULT_SETTINGS:
        print(f"settings: {args.settings}")
    if busy_before is not None:
        print(f"before the run the machine's CPUs were {busy_before:.0%} busy (other work)")
    header = (
        f"{'phase':<14} {'N':>3} {'ok':>3} {'median':>7} {'p95':>7} {'max':>7} "
        f"{'client p50':>10} {'client p95':>10} {'wall':>7} {'cpu busy':>8}"
    )
    print(header)
    print("-" * len(header))
    for phase in phases:
        server = [s.server_s for s in phase.samples if s.server_s is not None]
        client = [s.client_s for s in phase.samples if s.client_s is not None]
        busy = f"{phase.cpu_busy:.0%}" if phase.cpu_busy is not None else "-"
        print(
            f"{phase.name:<14} {len(phase.samples):>3} {len(server):>3} "
            f"{fmt(statistics.median(server) if server else None):>7} "
            f"{fmt(nearest_rank(server, 95) if server else None):>7} "
            f"{fmt(max(server, default=None)):>7} "
            f"{fmt(statistics.median(client) if client else None):>10} "
            f"{fmt(nearest_rank(client, 95) if client else None):>10} "
            f"{fmt(phase.wall):>7} {busy:>8}"
        )
    print("median/p95/max: activated_at - created_at from the database (p95: nearest rank)")
    print("client: from calling create_tenant to the poll that saw the tenant active")
    print("wall: one at a time, the whole phase; at once, first submit to last seen active")
    print(f"cpu busy: all {os.cpu_count()} CPUs of the machine, whoever used them")
    for phase in phases:
        parts = breakdown(phase.samples)
        print()
        print(f"{phase.name}: where the time goes (medians over active tenants)")
        if phase.submitting is not None:
            print(f"  submitting all {len(phase.samples)} took {phase.submitting:.2f}s")
        if phase.cluster_cpu is not None:
            print(
                f"  qcluster processes used {phase.cluster_cpu:.1f} CPU-s "
                f"({phase.cluster_cpu / len(phase.samples):.2f} per tenant)"
            )
        if phase.sessions is not None:
            per_second = phase.sessions / phase.wall if math.isfinite(phase.wall) else 0
            print(
                f"  PostgreSQL sessions opened: {phase.sessions} "
                f"({phase.sessions / len(phase.samples):.1f} per tenant, {per_second:.1f}/s)"
            )
        print(
            f"  queue wait (submit -> run claimed)  {fmt(parts['queue_wait'])}"
            f"  (max {fmt(parts['queue_wait_max'])})"
        )
        print(f"  claimed -> first step started      {fmt(parts['claim_to_first_step'])}")
        for step, value in parts["steps"].items():
            print(f"  {step:<35} {fmt(value)}")
        print(f"  sum of steps up to mark_active     {fmt(parts['steps_to_active'])}")
        print(f"  gaps between those steps (sum)     {fmt(parts['gaps_between_steps'])}")


def report_failures(samples: list[Sample]) -> None:
    from provisioning.models import ProvisioningRun

    print(f"\n{len(samples)} tenant(s) not active:")
    for sample in samples:
        run = ProvisioningRun.objects.filter(tenant_id=sample.tenant_id).order_by("-id").first()
        where = f"{run.status} at {run.failed_step or '-'}: {run.error or '-'}" if run else "-"
        print(f"  {sample.slug}: {sample.state}; run {where}")


# The cluster.


class Cluster:
    """``manage.py qcluster`` in its own session, logging to a file."""

    def __init__(self, env: dict, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches this script, which stops it in order
        )

    def wait_running(self) -> None:
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT
        while "running." not in self.log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"qcluster did not start:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=CLUSTER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.close()


# Main.


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="tenants per phase (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="Q_WORKERS (default 2)")
    parser.add_argument(
        "--database-url",
        help="server for the scratch database (default: $DATABASE_URL, else the embedded one)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured tenants before phase 1 (default 1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for one tenant, or for all at once (default 120)",
    )
    parser.add_argument(
        "--phase",
        choices=("both", "one-at-a-time", "at-once"),
        default="both",
        help="which phases to run (default both)",
    )
    parser.add_argument(
        "--settings",
        default=DEFAULT_SETTINGS,
        help="DJANGO_SETTINGS_MODULE for this script and the cluster, to measure a change "
        f"(default {DEFAULT_SETTINGS})",
    )
    parser.add_argument(
        "--driver",
        choices=("docker", "swarm"),
        default="docker",
        help="docker (the engine at DOCKER_HOST), or swarm (a two-node swarm of its own)",
    )
    parser.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    if args.n < 1 or args.workers < 1 or args.warmup < 0:
        parser.error("--n and --workers must be at least 1, --warmup at least 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM ends the run the way Ctrl-C does, through the finally block.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    namespace = f"bench{os.getpid()}-"
    prefix = f"tpc-{namespace}"
    scratch = f"bench_{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-tta-"))
    cluster = client = url = lab = None
    created_db = False
    try:
        if args.driver == "swarm":
            from tests.swarm_support import SwarmLab, missing_tools

            if why := missing_tools():
                raise BenchError(f"no swarm of its own can be made here: {why}")
            lab = SwarmLab.up()
            print(f"swarm up in {lab.up_seconds:.1f}s", file=sys.stderr)
            os.environ.update(lab.env())
        client = docker_client()
        busy_before = busy_share(BUSY_SAMPLE_SECONDS)
        url = server_url(args.database_url)
        create_database(url, scratch)
        created_db = True
        env = {
            "DATABASE_URL": with_database(url, scratch),
            "DJANGO_SETTINGS_MODULE": args.settings,
            "RESOURCE_NAMESPACE": namespace,
            "WORKLOAD_DRIVER": args.driver,
            **(lab.env() if lab else {}),
            "Q_WORKERS": str(args.workers),
            "PROVISIONING_FAULTS_ENABLED": "0",
            # Files (locks, welcome emails, the nginx route table) stay in the
            # scratch directory, away from a console sharing var/.
            "VAR_DIR": str(tmp / "var"),
            "ROUTES_FILE": str(tmp / "var" / "routes" / "nginx-tenants.conf"),
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(tmp / "var" / "emails"),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        setup_django(env)

        from django.conf import settings
        from django.core.management import call_command

        from provisioning.drivers import get_driver

        print(
            f"scratch database {scratch}, namespace {namespace}, "
            f"Q_WORKERS={args.workers}, N={args.n}, driver {args.driver}",
            file=sys.stderr,
        )
        call_command("migrate", verbosity=0, interactive=False)
        # The image is built once per engine: build it now, not in the first tenant.
        get_driver(args.driver).ensure_image(settings.WORKLOAD_IMAGE)
        warn_network_room(client, args.warmup + args.n)

        cluster = Cluster({**os.environ, **env}, tmp / "qcluster.log")
        cluster.wait_running()
        print("qcluster running", file=sys.stderr)

        made: list[Sample] = []
        if args.warmup:
            print(f"warm-up: {args.warmup} tenant(s), not measured", file=sys.stderr)
            made += one_at_a_time(
                "warm-up", "warm", args.warmup, args.timeout, cluster.proc.pid
            ).samples

        phases: list[Phase] = []
        if args.phase in ("both", "one-at-a-time"):
            print(f"phase 1: {args.n} one at a time", file=sys.stderr)
            phases.append(
                one_at_a_time("one at a time", "seq", args.n, args.timeout, cluster.proc.pid)
            )
            made += phases[-1].samples
        if args.phase in ("both", "at-once"):
            if made:
                # Free the engine's networks first (see the module docstring).
                done, asked, seconds = decommission(made, args.timeout)
                print(f"decommissioned {done}/{asked} tenant(s) in {seconds:.1f}s", file=sys.stderr)
                remove_namespace(client, prefix)  # whatever the workers left
            print(f"phase 2: {args.n} at once", file=sys.stderr)
            phases.append(all_at_once("at once", "burst", args.n, args.timeout, cluster.proc.pid))

        report(args, phases, busy_before)
        failed = [s for phase in phases for s in phase.samples if s.server_s is None]
        if failed:
            report_failures(failed)
            return 1
        return 0
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        cleanup(cluster, client, prefix, url, scratch if created_db else None, args.keep_db)
        if lab is not None:
            lab.down()
            print("cleanup: the swarm is down", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def cleanup(cluster, client, prefix, url, scratch, keep_db) -> None:
    """Stop the cluster, remove the namespace, drop the database; each even if one fails."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C waits
    try:
        if cluster is not None:
            try:
                cluster.stop()
            except Exception as exc:
                print(f"cleanup: stopping qcluster: {exc}", file=sys.stderr)
        if client is not None:
            try:
                containers, networks = remove_namespace(client, prefix)
                print(
                    f"cleanup: removed {containers} container(s), {networks} network(s) "
                    f"named {prefix}*",
                    file=sys.stderr,
                )
            except Exception as exc:
                print(f"cleanup: removing {prefix}*: {exc}", file=sys.stderr)
        if scratch:
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
            if keep_db:
                print(f"cleanup: kept database {scratch}", file=sys.stderr)
            else:
                try:
                    drop_database(url, scratch)
                    print(f"cleanup: dropped database {scratch}", file=sys.stderr)
                except Exception as exc:
                    print(f"cleanup: dropping {scratch}: {exc}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
