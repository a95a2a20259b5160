"""Soak: many tenants over minutes, with faults, worker crashes and an engine restart.

    .venv/bin/python bench/soak.py [--tenants 500] [--minutes 10] [--out JSON]

Not in CI (docs/RELIABILITY.md, "The soak", has the command and the figures).
It sets up its own world and takes it down again:

- a Docker Engine of its own (tests/engine_support.OwnEngine: a dockerd with
  its own root, socket and network namespace), the only engine it restarts;
- a scratch database ``bench_<random>`` (default: $DATABASE_URL's server,
  else the embedded PostgreSQL), migrated here; files in a temporary VAR_DIR;
- a real ``manage.py qcluster`` (two workers) and one daphne (DEBUG=0).

Then it creates ``--tenants`` free tenants evenly over ``--minutes``; a share
of them (``--fault-share``, 5 %) with one transient fault at a random step.
Once a minute it SIGKILLs the worker process that holds a run's lease (a
child of its own cluster), and at half time it restarts its engine (SIGTERM
to dockerd, started again). When every tenant has been created it waits for
every run to end (``--settle`` seconds at most) and reports:

- lost runs (a tenant provisioning with no run in flight) and stuck runs
  (still in flight when the wait ended); failed tenants with their errors;
- time to active (``activated_at - created_at``), p50 and p95;
- RSS of the qcluster's processes and of daphne at the start and the end;
- the database's growth per tenant (``pg_database_size``);
- the audit feed page (``/audit/`` through daphne, signed in) over the
  events of all the tenants, ``--renders`` times: p50, p95, max.

Finally it decommissions every tenant, waits, and runs reconcile, which must
find nothing. Everything is removed on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine as bench_engine  # noqa: E402  (RSS of a process tree)
import push_latency  # noqa: E402  (free_port, operator_cookie)
import time_to_active as tta  # noqa: E402  (scratch database, cluster, CPU)

ROOT = tta.ROOT
sys.path.insert(0, str(ROOT))


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Daphne:
    def __init__(self, env: dict, log_path: Path):
        self.port = push_latency.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")  # noqa: SIM115  (closed in stop)
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
            + ["console.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self) -> None:
        import httpx

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise tta.BenchError(self.log_path.read_text()[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise tta.BenchError("daphne did not answer /healthz within 30 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


def lease_holders(cluster_pid: int) -> list[int]:
    """Pids of the cluster's worker processes that hold a live run's lease right now."""
    from provisioning.models import ProvisioningRun

    ours = set(bench_engine.tree_pids(cluster_pid)) - {cluster_pid}
    owners = (
        ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE)
        .exclude(lease_owner="")
        .values_list("lease_owner", flat=True)
    )
    pids = set()
    for owner in owners:
        with contextlib.suppress(IndexError, ValueError):
            pids.add(int(owner.split(":")[1]))
    return sorted(pids & ours)


def database_size() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        return cursor.fetchone()[0]


def live_runs() -> int:
    from provisioning.models import ProvisioningRun

    return ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE).count()


def render_audit(daphne: Daphne, cookie: str, n: int) -> dict:
    import httpx

    times = []
    with httpx.Client(base_url=daphne.url, cookies={"sessionid": cookie}, timeout=30) as http:
        http.get("/audit/")  # the first render warms the process's template cache
        for _ in range(n):
            began = time.perf_counter()
            response = http.get("/audit/")
            times.append((time.perf_counter() - began) * 1000)
            if response.status_code != 200:
                raise tta.BenchError(
                    f"/audit/ answered {response.status_code}:\n"
                    + daphne.log_path.read_text()[-3000:]
                )
    return {
        "renders": n,
        "p50_ms": statistics.median(times),
        "p95_ms": pct(times, 95),
        "max_ms": max(times),
        "bytes": len(response.content),
    }


def restart(engine, record: dict) -> None:
    """Stop dockerd (SIGTERM, as an operator would) and start it again; note the times."""
    import tests.engine_support as engine_support

    # dockerd restores every container before it answers: minutes with hundreds.
    engine_support.START_TIMEOUT = 900.0
    began = time.monotonic()
    engine.stop()
    record["stopped_in_s"] = round(time.monotonic() - began, 2)
    record["answered_after_start_s"] = round(engine.start(), 2)
    record["outage_s"] = round(time.monotonic() - began, 2)
    log(f"engine back after {record['outage_s']:.1f} s")


def soak(args, world: dict) -> dict:
    from django.contrib.auth.models import User

    from provisioning import actions, faults, reconcile
    from provisioning.models import AuditEvent, ProvisioningRun
    from provisioning.steps import STEP_IDS
    from tenants.models import Tenant

    cluster, daphne, engine = world["cluster"], world["daphne"], world["engine"]
    rng = random.Random(args.seed)
    cookie = push_latency.operator_cookie()
    operator = User.objects.get(username="bench-operator")
    results: dict = {"tenants": args.tenants, "minutes": args.minutes}
    rss = {"start": {}, "end": {}}
    rss["start"] = {
        "qcluster_mb": bench_engine.tree_rss_mb(cluster.proc.pid),
        "daphne_mb": bench_engine.tree_rss_mb(daphne.proc.pid),
    }
    size_start = database_size()
    interval = args.minutes * 60 / args.tenants
    began = time.monotonic()
    next_crash = began + args.crash_every
    restart_at = began + args.minutes * 60 / 2
    restarted = None
    kills, faulted, ids = 0, 0, []
    for i in range(args.tenants):
        due = began + i * interval
        while (now := time.monotonic()) < due:
            if now >= next_crash and (pids := lease_holders(cluster.proc.pid)):
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
                next_crash += args.crash_every
            if restarted is None and now >= restart_at:
                # In a thread: creates go on while the engine is away, as they would.
                log(f"restarting the engine ({i} tenants created)")
                restarted = {"after_s": round(now - began, 1), "created_before": i}
                restarter = threading.Thread(target=restart, args=(engine, restarted))
                restarter.start()
            time.sleep(min(0.05, max(0.0, due - time.monotonic())))
        injected = []
        if rng.random() < args.fault_share:
            injected = [faults.parse(f"{rng.choice(STEP_IDS)}:transient:1")]
            faulted += 1
        tenant = actions.create_tenant(
            slug=f"s{i:04d}",
            org="soak",
            plan="free",
            admin_email="admin@example.com",
            user=operator,
            faults=injected,
        )
        ids.append(tenant.pk)
        if i and i % 50 == 0:
            log(f"{i} created, {live_runs()} in flight, {kills} workers killed")
    if restarted is not None:
        restarter.join()
    created_s = time.monotonic() - began
    log(f"all {args.tenants} created in {created_s:.0f} s; waiting for every run to end")
    deadline = time.monotonic() + args.settle
    while live_runs() and time.monotonic() < deadline:
        time.sleep(0.5)
    settled_s = time.monotonic() - began
    tenants = Tenant.objects.filter(pk__in=ids)
    states = Counter(tenants.values_list("state", flat=True))
    stuck = ProvisioningRun.objects.filter(tenant__in=tenants, status__in=ProvisioningRun.LIVE)
    live_tenants = set(stuck.values_list("tenant_id", flat=True))
    lost = tenants.filter(state="provisioning").exclude(pk__in=live_tenants)
    failed = [
        (t.slug, actions.latest_run(t).failed_step, actions.latest_run(t).error[:200])
        for t in tenants.filter(state="failed")
    ]
    to_active = [
        (t.activated_at - t.created_at).total_seconds()
        for t in tenants.filter(state="active").only("activated_at", "created_at")
    ]
    rss["end"] = {
        "qcluster_mb": bench_engine.tree_rss_mb(cluster.proc.pid),
        "daphne_mb": bench_engine.tree_rss_mb(daphne.proc.pid),
    }
    size_end = database_size()
    events = AuditEvent.objects.count()
    log(f"rendering /audit/ over {events} events")
    audit = render_audit(daphne, cookie, args.renders)
    results.update(
        created_in_s=round(created_s, 1),
        settled_in_s=round(settled_s, 1),
        states=dict(states),
        stuck_runs=stuck.count(),
        lost_runs=lost.count(),
        failed=failed,
        transient_faults=faulted,
        workers_killed=kills,
        engine_restart=restarted,
        resumes=sum(
            ProvisioningRun.objects.filter(tenant__in=tenants).values_list("resumes", flat=True)
        ),
        time_to_active_s={
            "n": len(to_active),
            "p50": statistics.median(to_active) if to_active else None,
            "p95": pct(to_active, 95),
            "max": max(to_active, default=None),
        },
        rss=rss,
        database={
            "start_mb": size_start / 2**20,
            "end_mb": size_end / 2**20,
            "per_tenant_kb": (size_end - size_start) / args.tenants / 1024,
        },
        audit_events=events,
        audit_feed=audit,
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log("decommissioning every tenant")
    began_decommission = time.monotonic()
    deadline = time.monotonic() + args.settle
    todo = set(ids)
    while todo and time.monotonic() < deadline:
        for tenant in Tenant.objects.filter(pk__in=todo):
            if tenant.state == "decommissioned":
                todo.discard(tenant.pk)
                continue
            if tenant.state in ("active", "failed"):
                # Refused while a run finishes its last step: the next pass tries again.
                with contextlib.suppress(actions.ActionError):
                    actions.decommission_tenant(tenant, user=operator, reason="soak over")
        time.sleep(1)
    while live_runs() and time.monotonic() < deadline:
        time.sleep(0.5)
    report = reconcile.find_drift()
    results["decommission"] = {
        "seconds": round(time.monotonic() - began_decommission, 1),
        "states": dict(Counter(Tenant.objects.filter(pk__in=ids).values_list("state", flat=True))),
        "reconcile_findings": [f"{f.problem} {f.kind} {f.name}: {f.why}" for f in report.findings],
        "reconcile_errors": report.errors,
        "left_on_engine": len(
            engine.client().containers.list(
                all=True, filters={"label": "io.tenant-console.managed"}
            )
        ),
    }
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fault-share", type=float, default=0.05)
    parser.add_argument("--crash-every", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--settle", type=float, default=300.0, help="longest wait for runs, s")
    parser.add_argument("--renders", type=int, default=20, help="timed renders of /audit/")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--database-url", help="server for the scratch database")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from tests.engine_support import OwnEngine, missing_tools

    if why := missing_tools():
        print(f"soak: {why}", file=sys.stderr)
        return 2
    namespace = f"soak{os.getpid()}-"
    scratch = f"bench_{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    world: dict = {}
    url = None
    try:
        busy = tta.busy_share(2.0)
        load = os.getloadavg()
        world["engine"] = OwnEngine.up(str(4000 + os.getpid() % 4000))
        url = tta.server_url(args.database_url)
        tta.create_database(url, scratch)
        world["db"] = scratch
        env = {
            "DATABASE_URL": tta.with_database(url, scratch),
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "RESOURCE_NAMESPACE": namespace,
            "WORKLOAD_DRIVER": "docker",
            **world["engine"].env(),
            "Q_WORKERS": "2",
            "PROVISIONING_FAULTS_ENABLED": "1",
            "SECRET_KEY": secrets.token_urlsafe(40),
            "VAR_DIR": str(tmp / "var"),
            "ROUTES_FILE": str(tmp / "var" / "routes" / "nginx-tenants.conf"),
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(tmp / "var" / "emails"),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        os.environ.pop("REDIS_URL", None)
        tta.setup_django(env)
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        base = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | env
        production = base | {
            "DEBUG": "0",
            "SECURE_SSL_REDIRECT": "0",
            "SESSION_COOKIE_SECURE": "0",
            "CSRF_COOKIE_SECURE": "0",
            "SECURE_HSTS_SECONDS": "0",
        }
        # daphne runs as in production (DEBUG=0): pages need the static manifest.
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=production,
            check=True,
        )
        world["daphne"] = Daphne(production, tmp / "daphne.log")
        world["cluster"] = tta.Cluster(base, tmp / "qcluster.log")
        world["cluster"].wait_running()
        world["daphne"].wait()
        log(f"world up: engine {world['engine'].url}, database {scratch}")
        results = soak(args, world)
        results["machine"] = {
            "load_before": [round(x, 2) for x in load],
            "cpu_busy_before": busy,
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip(),
        }
        text = json.dumps(results, indent=2, default=str)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return 0
    except tta.BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    finally:
        for name in ("cluster", "daphne"):
            with contextlib.suppress(Exception):
                if name in world:
                    world[name].stop()
        if "db" in world:
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
                tta.drop_database(url, scratch)
        if "engine" in world:
            with contextlib.suppress(Exception):
                world["engine"].down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
