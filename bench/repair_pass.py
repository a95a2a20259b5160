"""How long one pass of the repair loop takes, against the number of active tenants.

    .venv/bin/python bench/repair_pass.py [--n 10,25,50] [--workers 2] [--database-url URL]

The loop (provisioning.repair.repair_all) runs every 30 s and goes through
the active tenants one after another, so how long a pass takes decides how
many tenants one loop keeps up with. For each N this measures, on the
Docker driver, with N active `pro` tenants (2 replicas each):

- **healthy**: a pass that finds every replica running and answering (one
  container listing, one network lookup and two /healthz probes per tenant);
  the median of 3 passes;
- **repair**: a pass after `docker stop` of one replica of every tenant: it
  starts N replicas and waits for each to answer before the next tenant.

Like bench/time_to_active.py (whose helpers it uses) it makes a scratch
database, names everything ``tpc-bench<pid>-...`` on the engine, runs a real
``qcluster`` only to provision the tenants (the loop's own schedules are
removed, so only the measured passes repair), and removes it all afterwards,
also on Ctrl-C. The chart goes to ``--chart`` (default docs/repair-pass.png).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import time_to_active as tta  # bench/ is on sys.path when this file runs as a script

ROOT = Path(__file__).resolve().parent.parent
PASSES = 3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="10,25,50", help="tenant counts (default 10,25,50)")
    parser.add_argument("--workers", type=int, default=2, help="Q_WORKERS (default 2)")
    parser.add_argument("--database-url", help="server for the scratch database")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to provision")
    parser.add_argument("--chart", default=str(ROOT / "docs" / "repair-pass.png"))
    args = parser.parse_args(argv)
    try:
        args.counts = sorted({int(n) for n in args.n.split(",")})
    except ValueError:
        parser.error("--n is a comma-separated list of whole numbers")
    if not args.counts or args.counts[0] < 1:
        parser.error("--n counts must be at least 1")
    return args


def provision_up_to(count: int, timeout: float) -> list:
    """Active pro tenants bench0..bench<count-1>, their runs finished."""
    from provisioning import actions
    from provisioning.models import ProvisioningRun
    from tenants.models import Tenant

    have = Tenant.objects.count()
    for i in range(have, count):
        actions.create_tenant(
            slug=f"rp{i}", org="bench", plan="pro", admin_email="bench@example.com"
        )
    deadline = time.monotonic() + timeout
    while True:
        states = set(Tenant.objects.values_list("state", flat=True))
        live = ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE).exists()
        if states == {"active"} and not live:
            return list(Tenant.objects.select_related("plan").order_by("pk"))
        if "failed" in states:
            raise tta.BenchError("a tenant failed to provision; see the qcluster log")
        if time.monotonic() > deadline:
            raise tta.BenchError(f"tenants not active after {timeout:.0f}s: {states}")
        time.sleep(0.2)


def measure(tenants: list, client) -> dict:
    from provisioning import repair
    from provisioning.models import AuditEvent

    healthy = []
    for _ in range(PASSES):
        began = time.perf_counter()
        summary = repair.repair_all()
        healthy.append(time.perf_counter() - began)
        if not summary.endswith(" 0 repair(s)"):
            raise tta.BenchError(f"a healthy pass repaired something: {summary}")
    since = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    for tenant in tenants:
        client.containers.get(f"tpc-{tenant.key}-r1").stop(timeout=0)
    began = time.perf_counter()
    summary = repair.repair_all()
    repair_s = time.perf_counter() - began
    events = AuditEvent.objects.filter(seq__gt=since, type="tenant.workload.repaired")
    seconds = [e.details["seconds"] for e in events if e.details.get("action") == "restarted"]
    if len(seconds) != len(tenants):
        raise tta.BenchError(f"expected {len(tenants)} restarts, got {summary}")
    return {
        "n": len(tenants),
        "healthy_s": statistics.median(healthy),
        "repair_s": repair_s,
        "restart_median_s": statistics.median(seconds),
        "restart_max_s": max(seconds),
    }


def chart(rows: list[dict], path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed (pip install -e .[bench])"
    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(ns, [r["healthy_s"] for r in rows], "o-", label="healthy pass (median of 3)")
    ax.plot(ns, [r["repair_s"] for r in rows], "s-", label="pass restarting 1 replica per tenant")
    ax.axhline(30, color="grey", linestyle="--", label="the loop's interval (30 s)")
    ax.set_xlabel("active pro tenants (2 replicas each)")
    ax.set_ylabel("seconds per pass")
    ax.set_title("Repair loop: one pass (bench/repair_pass.py)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return f"chart: {path}"


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    namespace = f"bench{os.getpid()}-"
    prefix = f"tpc-{namespace}"
    scratch = f"bench_{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-repair-"))
    cluster = client = url = None
    created_db = False
    try:
        client = tta.docker_client()
        url = tta.server_url(args.database_url)
        tta.create_database(url, scratch)
        created_db = True
        env = {
            "DATABASE_URL": tta.with_database(url, scratch),
            "DJANGO_SETTINGS_MODULE": tta.DEFAULT_SETTINGS,
            "RESOURCE_NAMESPACE": namespace,
            "WORKLOAD_DRIVER": "docker",
            "Q_WORKERS": str(args.workers),
            "VAR_DIR": str(tmp / "var"),
            "ROUTES_FILE": str(tmp / "var" / "routes" / "nginx-tenants.conf"),
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(tmp / "var" / "emails"),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        tta.setup_django(env)
        from django.apps import apps
        from django.conf import settings
        from django.core.management import call_command

        from provisioning.drivers import get_driver

        call_command("migrate", verbosity=0, interactive=False)
        # Only the measured passes repair: the loop's schedules go.
        apps.get_model("django_q", "Schedule").objects.filter(
            func="provisioning.repair.repair_all"
        ).delete()
        get_driver("docker").ensure_image(settings.WORKLOAD_IMAGE)
        cluster = tta.Cluster({**os.environ, **env}, tmp / "qcluster.log")
        cluster.wait_running()
        rows = []
        for count in args.counts:
            print(f"provisioning up to {count} pro tenants", file=sys.stderr)
            tenants = provision_up_to(count, args.timeout)
            rows.append(measure(tenants, client))
            print(rows[-1], file=sys.stderr)
        print(
            "| tenants | healthy pass | pass restarting one replica each | restart median | max |"
        )
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['n']} | {r['healthy_s']:.2f} s | {r['repair_s']:.2f} s | "
                f"{r['restart_median_s']:.2f} s | {r['restart_max_s']:.2f} s |"
            )
        print(chart(rows, args.chart))
        return 0
    except tta.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        tta.cleanup(cluster, client, prefix, url, scratch if created_db else None, False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
