"""nginx's overhead per request, against the console's own tenant proxy (daphne).

    .venv/bin/python bench/edge_overhead.py [--requests 1000] [--plan pro] [--chart PNG]

It sets up its own world and takes it down again:

- a scratch database ``bench_<random>`` on the server of ``--database-url``
  (default: $DATABASE_URL, else the embedded PostgreSQL under var/pgdata),
  migrated in this process;
- a real ``manage.py qcluster`` and one daphne (``DEBUG=0``), the Docker
  driver (``RESOURCE_NAMESPACE=bench<pid>-``; the process driver when no
  engine answers, said in the output);
- Debian's nginx running ``deploy/nginx/tenant-console.conf`` (only its
  "SITE:" values replaced, as tests/test_nginx_edge.py does) on a free
  loopback port, reloaded by the workers' ``ROUTES_RELOAD_COMMAND``.

One tenant of ``--plan`` is provisioned through the saga. Then the same
request, ``GET /`` with the tenant's Host, goes three ways, one request at a
time over a kept-alive connection, interleaved in blocks of 50 so that the
machine's load falls alike on all three:

- **direct**: to a replica's published port (no proxy at all);
- **nginx**: to nginx, which sends it straight to a replica;
- **console**: to daphne, whose tenant proxy (provisioning/traffic/proxy.py)
  sends it to a replica.

Each proxy's overhead is its median minus the direct median; the ratio is
the console's overhead over nginx's, from this one run. ``--chart`` draws
the latency distributions. Afterwards it removes every container and
network under its namespace, stops nginx, daphne and the cluster, and drops
the scratch database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import time_to_active as tta  # noqa: E402  (the scratch-database and Docker helpers)
from push_latency import free_port, log, pct  # noqa: E402

BLOCK = 50
WAYS = ("direct", "nginx", "console")


class World:
    """Scratch database, qcluster, daphne and nginx; stopped and dropped on leaving."""

    def __init__(self, args, tmp: Path):
        self.args, self.tmp = args, tmp
        self.server = tta.server_url(args.database_url)
        self.name = f"bench_{secrets.token_hex(4)}"
        self.namespace = f"bench{os.getpid()}-"
        self.port, self.console_port = free_port(), free_port()
        self.routes = tmp / "routes" / "nginx-tenants.conf"
        self.driver = "docker"
        try:
            self.docker = tta.docker_client()
        except tta.BenchError as exc:
            log(f"{exc}: replicas run on the process driver instead")
            self.docker, self.driver = None, "process"
        self.env = {
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "DATABASE_URL": tta.with_database(self.server, self.name),
            "RESOURCE_NAMESPACE": self.namespace,
            "WORKLOAD_DRIVER": self.driver,
            "VAR_DIR": str(tmp / "var"),
            "ROUTES_FILE": str(self.routes),
            "BASE_DOMAIN": f"localhost:{self.port}",
            "SITE_URL": f"http://localhost:{self.port}",
            "SECRET_KEY": secrets.token_urlsafe(40),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "Q_WORKERS": "2",
        }
        self.procs: list[subprocess.Popen] = []
        self.nginx = None

    def __enter__(self) -> World:
        tta.create_database(self.server, self.name)
        os.environ.pop("REDIS_URL", None)
        tta.setup_django(self.env)
        from django.core.management import call_command

        from provisioning.traffic import export
        from tests.nginx_support import Nginx

        call_command("migrate", verbosity=0, interactive=False)
        export.write_routes_file()
        self.nginx = Nginx(
            self.tmp / "nginx", port=self.port, routes_file=self.routes,
            console_port=self.console_port,
        )  # fmt: skip
        checked = self.nginx.test_config()
        if checked.returncode != 0:
            raise tta.BenchError(f"nginx -t failed: {checked.stderr}")
        self.nginx.start()
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | self.env
        env["ROUTES_RELOAD_COMMAND"] = self.nginx.reload_command
        production = {
            "DEBUG": "0", "SECURE_SSL_REDIRECT": "0", "SESSION_COOKIE_SECURE": "0",
            "CSRF_COOKIE_SECURE": "0", "SECURE_HSTS_SECONDS": "0",
        }  # fmt: skip
        for name, argv, extra in [
            ("cluster", ["manage.py", "qcluster"], {}),
            ("daphne", ["-m", "daphne", "-b", "127.0.0.1", "-p", str(self.console_port),
                        "console.asgi:application"], production),
        ]:  # fmt: skip
            out = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    cwd=ROOT,
                    env=env | extra,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            )
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.nginx is not None:
            self.nginx.stop()
        if self.docker is not None:
            tta.remove_namespace(self.docker, f"tpc-{self.namespace}")
        from django.db import connections

        connections.close_all()
        tta.drop_database(self.server, self.name)


def provision(plan: str) -> tuple[str, list[str]]:
    """One tenant, through the saga, until active and its route is in nginx's table."""
    from provisioning import actions
    from provisioning.models import Route
    from tenants.models import Tenant

    tenant = actions.create_tenant(
        slug="edge", org="bench", plan=plan, admin_email="bench@example.com"
    )
    deadline = time.monotonic() + 120
    while (state := Tenant.objects.get(pk=tenant.pk).state) == "provisioning":
        if time.monotonic() > deadline:
            raise tta.BenchError("the tenant did not become active within 120 s")
        time.sleep(0.1)
    if state != "active":
        raise tta.BenchError(f"the tenant ended {state}, not active")
    return "edge-bench.localhost", Route.objects.get(tenant=tenant).backends


def measure(world: World, host: str, backends: list[str], n: int) -> dict[str, list[float]]:
    import httpx

    bases = {
        "direct": f"http://{backends[0]}",
        "nginx": f"http://127.0.0.1:{world.port}",
        "console": f"http://127.0.0.1:{world.console_port}",
    }
    headers = {"Host": f"{host}:{world.port}"}
    clients = {
        way: httpx.Client(base_url=base, headers=headers, trust_env=False, timeout=10)
        for way, base in bases.items()
    }
    # Until nginx has read the table with the tenant (the workers reload it),
    # it sends the host to the console; the access log says who answered.
    deadline = time.monotonic() + 30
    while True:
        clients["nginx"].get("/")
        last = world.nginx.access_log()[-1]
        if last.rsplit("upstream=", 1)[1] in backends:
            break
        if time.monotonic() > deadline:
            raise tta.BenchError(f"nginx does not route {host} to its replicas: {last}")
        time.sleep(0.1)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for client in clients.values():  # warm-up: connections, caches, the route cache
        for _ in range(20):
            assert client.get("/").status_code == 200
    for _ in range(max(1, n // BLOCK)):
        for way in WAYS:
            client = clients[way]
            for _ in range(BLOCK):
                start = time.perf_counter()
                response = client.get("/")
                times[way].append(time.perf_counter() - start)
                if response.status_code != 200 or b"tenant edge-bench" not in response.content:
                    raise tta.BenchError(f"{way}: {response.status_code} {response.text[:200]}")
    for client in clients.values():
        client.close()
    return times


def summarise(times: dict[str, list[float]]) -> dict:
    stats = {
        way: {
            "n": len(values),
            "p50_ms": statistics.median(values) * 1000,
            "p95_ms": pct(values, 95) * 1000,
            "max_ms": max(values) * 1000,
        }
        for way, values in times.items()
    }
    direct = stats["direct"]["p50_ms"]
    overhead = {way: stats[way]["p50_ms"] - direct for way in ("nginx", "console")}
    return {
        "latency": stats,
        "overhead_p50_ms": overhead,
        "ratio_console_over_nginx": overhead["console"] / overhead["nginx"]
        if overhead["nginx"] > 0
        else None,
    }


def write_chart(times: dict[str, list[float]], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for way in WAYS:
        values = sorted(t * 1000 for t in times[way])
        ax.plot(values, [i / len(values) for i in range(1, len(values) + 1)], label=way)
    ratio = summary["ratio_console_over_nginx"]
    ax.set_xscale("log")
    ax.set_xlabel("GET / of a tenant page, ms (log scale)")
    ax.set_ylabel("share of requests at or below")
    ax.set_title(
        "Direct to a replica, through nginx, through the console's proxy\n"
        f"overhead at the median: nginx {summary['overhead_p50_ms']['nginx']:.2f} ms, "
        f"console {summary['overhead_p50_ms']['console']:.2f} ms (x{ratio:.1f})",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="per way (in blocks of 50)")
    parser.add_argument("--plan", default="pro", help="the tenant's plan (pro: 2 replicas)")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--chart", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    load_before = os.getloadavg()
    try:
        with World(args, tmp) as world:
            host, backends = provision(args.plan)
            times = measure(world, host, backends, args.requests)
            summary = summarise(times)
            summary.update(
                driver=world.driver,
                plan=args.plan,
                replicas=len(backends),
                commit=subprocess.run(
                    ["git", "rev-parse", "--short", "HEAD"],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                ).stdout.strip(),  # fmt: skip
                nginx=subprocess.run(
                    [world.nginx.command()[0], "-v"], capture_output=True, text=True
                ).stderr.strip(),
                load_before=[round(x, 2) for x in load_before],
                load_after=[round(x, 2) for x in os.getloadavg()],
            )
    except tta.BenchError as exc:
        log(f"edge_overhead: {exc}")
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for way in WAYS:
        s = summary["latency"][way]
        print(f"{way:8} n={s['n']}  p50 {s['p50_ms']:.2f} ms  p95 {s['p95_ms']:.2f} ms  "
              f"max {s['max_ms']:.1f} ms")  # fmt: skip
    o = summary["overhead_p50_ms"]
    print(f"overhead at the median: nginx {o['nginx']:.2f} ms, console {o['console']:.2f} ms; "
          f"console / nginx = {summary['ratio_console_over_nginx']:.1f}")  # fmt: skip
    print(f"driver {summary['driver']}, plan {summary['plan']} ({summary['replicas']} replicas), "
          f"{summary['nginx']}, commit {summary['commit']}, load {summary['load_before']} -> "
          f"{summary['load_after']}")  # fmt: skip
    if args.chart:
        write_chart(times, summary, args.chart)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
