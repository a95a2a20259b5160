"""Live push latency: from the commit of an audit event to its frame at N watching sockets.

    .venv/bin/python bench/push_latency.py [--watchers 10,100,1000] [--rounds 3]

For each N it sets up a world and takes it down again:

- a scratch database ``bench_<random>`` on the server of ``--database-url``
  (default: $DATABASE_URL, else the embedded PostgreSQL under var/pgdata),
  migrated in this process, with the no-op step set (``BENCHMARK=1``,
  ``PROVISIONING_STEP_SET=noop``: the engine's own bookkeeping, no Docker);
- one daphne (``console.asgi``, ``DEBUG=0`` as in production) and a real
  ``manage.py qcluster`` (ORM broker, 2 workers) on it;
- an operator's session, and N websocket clients (the ``websockets`` library)
  on one tenant's detail page.

Each round creates a tenant whose ``wait_ready`` waits (parked, holding no
worker) long enough for the N sockets to connect and receive their full
page; the saga then finishes (wait_ready, mark_active, welcome emails,
completed: the measured events) and is decommissioned (10 more events) while
the sockets watch. This process LISTENs on the ``console`` channel itself:
PostgreSQL delivers a notification when its transaction commits, so the
arrival of ``{"seq": n}`` here is the commit time of event n (same machine,
same clock). A watcher's latency for event n is the arrival of the first
frame that carries ``id="event-<n>"`` minus that commit time. It reports
p50/p95/max over every (event, watcher) pair, the frames' sizes, the full
page a socket gets on connect (what every push was before pushes carried
only what changed), and daphne's RSS (sampled every 0.2 s).

``--chart PATH`` writes p50/p95 against watchers (matplotlib); ``--out``
writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import socket
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

import time_to_active as tta  # noqa: E402  (the scratch-database helpers)
from engine import tree_rss_mb  # noqa: E402

EVENT_ID = re.compile(rb'id="event-(\d+)"')
CONNECT_BATCH = 50


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class World:
    """A scratch database, daphne and a qcluster; stopped and dropped on leaving."""

    def __init__(self, args, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.server = tta.server_url(args.database_url)
        self.name = f"bench_{secrets.token_hex(4)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "BENCHMARK": "1",
            "DEBUG": "1",
            "PROVISIONING_STEP_SET": "noop",
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "RESOURCE_NAMESPACE": f"bench{os.getpid()}-",
            "WORKLOAD_DRIVER": "process",
            "VAR_DIR": str(tmp / "var"),
            "ROUTES_FILE": "",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "SITE_URL": self.url,
            "Q_WORKERS": "2",
            "DATABASE_URL": tta.with_database(self.server, self.name),
            "SECRET_KEY": secrets.token_urlsafe(40),  # sessions are checked by every process
        }
        # daphne as in production (DEBUG=0): it runs no step, so it needs no
        # benchmark step set; plain HTTP on loopback.
        self.daphne_env = {
            **self.env,
            "DEBUG": "0",
            "BENCHMARK": "0",
            "PROVISIONING_STEP_SET": "real",
            "SECURE_SSL_REDIRECT": "0",
            "SESSION_COOKIE_SECURE": "0",
            "CSRF_COOKIE_SECURE": "0",
            "SECURE_HSTS_SECONDS": "0",
            # --logs: the hub's timing of each push (render, sends) in daphne.log.
            "LOG_LEVEL": "DEBUG" if args.logs else "WARNING",
        }
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> World:
        tta.create_database(self.server, self.name)
        os.environ.pop("REDIS_URL", None)
        tta.setup_django(self.env)
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | self.env
        daphne_env = env | self.daphne_env
        daphne_log = open(self.tmp / "daphne.log", "w")  # noqa: SIM115
        self.daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
            + ["console.asgi:application"],
            cwd=ROOT,
            env=daphne_env,
            stdout=daphne_log,
            stderr=subprocess.STDOUT,
        )
        cluster_log = open(self.tmp / "cluster.log", "w")  # noqa: SIM115
        self.cluster = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=cluster_log,
            stderr=subprocess.STDOUT,
        )
        self.procs = [self.daphne, self.cluster]
        self._wait_http()
        if self.args.profile:
            # py-spy samples daphne until the world ends (collapsed stacks, one per line).
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            sampling = ["--rate", "250", "--format", "raw", "--output", str(self.args.profile)]
            self.profiler = subprocess.Popen(
                [py_spy, "record", "--pid", str(self.daphne.pid), *sampling],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        return self

    def _wait_http(self) -> None:
        import httpx

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.daphne.poll() is not None:
                raise tta.BenchError((self.tmp / "daphne.log").read_text()[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise tta.BenchError("daphne did not answer /healthz within 30 s")

    def __exit__(self, *exc) -> None:
        profiler = getattr(self, "profiler", None)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            profiler.wait(30)
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        from django.db import connections

        if self.args.logs:
            self.args.logs.mkdir(parents=True, exist_ok=True)
            for name in ("daphne.log", "cluster.log"):
                shutil.copy(self.tmp / name, self.args.logs / name)
        connections.close_all()
        if not self.args.keep_db:
            tta.drop_database(self.server, self.name)


def operator_cookie() -> str:
    """A signed-in operator's session cookie."""
    from django.contrib.auth.models import Group, User
    from django.test import Client

    user = User.objects.create_user("bench-operator", password=secrets.token_hex(8))
    user.groups.add(Group.objects.get(name="operators"))
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def watch(url: str, cookie: str, origin: str, frames: list, ready: asyncio.Event):
    """One watcher: connects, takes its full page, then notes each frame's arrival."""
    import websockets

    async with websockets.connect(
        url,
        additional_headers={"Cookie": f"sessionid={cookie}", "Origin": origin},
        max_size=2**22,
        open_timeout=120,
        ping_interval=None,
        compression=None,
    ) as ws:
        first = await ws.recv(decode=False)
        frames.append((time.monotonic(), len(first), first, True))
        ready.set()
        async for frame in ws:
            data = frame if isinstance(frame, bytes) else frame.encode()
            frames.append((time.monotonic(), len(data), data, False))


async def listen_commits(dsn: str, commits: dict, stop: asyncio.Event) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("LISTEN console")
        gen = conn.notifies()
        async for note in gen:
            seq = json.loads(note.payload).get("seq")
            if isinstance(seq, int):
                commits.setdefault(seq, time.monotonic())
            if stop.is_set():
                break


async def sample_rss(pid: int, peak: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak.append(tree_rss_mb(pid))
        await asyncio.sleep(0.2)


def create_waiting_tenant(slug: str, wait_s: float):
    from provisioning import actions
    from provisioning.steps.noop import wait_spec

    return actions.create_tenant(
        slug=slug, org="bench", plan="free", admin_email="b@example.com", faults=[wait_spec(wait_s)]
    )


def tenant_state(pk: int) -> tuple[str, bool]:
    from provisioning.models import ProvisioningRun
    from tenants.models import Tenant

    tenant = Tenant.objects.get(pk=pk)
    live = ProvisioningRun.objects.filter(tenant=tenant, status__in=ProvisioningRun.LIVE).exists()
    return tenant.state, live


def decommission(pk: int) -> None:
    from provisioning import actions
    from tenants.models import Tenant

    actions.decommission_tenant(Tenant.objects.get(pk=pk))


async def until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise tta.BenchError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def one_round(world: World, cookie: str, n: int, round_no: int, out: dict) -> None:
    from django.db import connections

    slug = f"w{n}r{round_no}-{secrets.token_hex(2)}"
    # Long enough for N sockets to connect and get their full page first.
    wait_s = 3 + n * 0.03
    tenant = await asyncio.to_thread(create_waiting_tenant, slug, wait_s)
    ws_url = f"ws://127.0.0.1:{world.port}/ws/tenants/{slug}/"
    frames: list[list] = [[] for _ in range(n)]
    readies = [asyncio.Event() for _ in range(n)]
    commits: dict[int, float] = {}
    stop = asyncio.Event()
    peak: list[float] = []
    dsn = world.env["DATABASE_URL"]
    listener = asyncio.ensure_future(listen_commits(dsn, commits, stop))
    sampler = asyncio.ensure_future(sample_rss(world.daphne.pid, peak, stop))
    started = time.monotonic()
    watchers = []
    for first in range(0, n, CONNECT_BATCH):  # a batch at a time, as browsers arriving
        batch = range(first, min(n, first + CONNECT_BATCH))
        for i in batch:
            watchers.append(
                asyncio.ensure_future(watch(ws_url, cookie, world.url, frames[i], readies[i]))
            )
        await asyncio.wait_for(asyncio.gather(*(readies[i].wait() for i in batch)), timeout=60)
    connected_s = time.monotonic() - started
    measure_from = time.monotonic()

    def active():
        state, live = tenant_state(tenant.pk)
        connections.close_all()
        return state == "active" and not live

    await until(active, wait_s + 60, f"{slug} to go active")
    await asyncio.to_thread(decommission, tenant.pk)

    def gone():
        state, live = tenant_state(tenant.pk)
        connections.close_all()
        return state == "decommissioned" and not live

    await until(gone, 60, f"{slug} to be decommissioned")
    await asyncio.sleep(1.0)  # the last frames
    stop.set()
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    listener.cancel()
    sampler.cancel()
    await asyncio.gather(listener, sampler, return_exceptions=True)

    measured = {seq: t for seq, t in commits.items() if t >= measure_from}
    per_event: dict[int, list[float]] = {seq: [] for seq in measured}
    for watcher in frames:
        seen: set[int] = set()
        for at, size, data, is_first in watcher:
            if is_first:
                out["connect_bytes"].append(size)
                continue
            if at < measure_from:
                continue
            out["frame_bytes"].append(size)
            for match in EVENT_ID.finditer(data):
                seq = int(match.group(1))
                if seq in measured and seq not in seen:
                    seen.add(seq)
                    out["latency_ms"].append((at - measured[seq]) * 1000)
                    per_event[seq].append((at - measured[seq]) * 1000)
        out["missed"] += len(set(measured) - seen)
    out["events"] += len(measured)
    if world.args.verbose:
        for seq in sorted(per_event):
            got = sorted(per_event[seq])
            gap = (measured[seq] - measured.get(seq - 1, measured[seq])) * 1000
            log(
                f"    seq {seq}: +{gap:5.1f}ms after the previous; first {got[0]:6.1f}ms, "
                f"median {statistics.median(got):6.1f}ms, last {got[-1]:6.1f}ms"
                if got
                else f"    seq {seq}: never arrived"
            )
    out["connect_s"].append(connected_s)
    out["rss_mb"].extend(peak)


async def measure(world: World, cookie: str, n: int, rounds: int) -> dict:
    out = {
        "watchers": n,
        "latency_ms": [],
        "frame_bytes": [],
        "connect_bytes": [],
        "connect_s": [],
        "rss_mb": [],
        "events": 0,
        "missed": 0,
    }
    for round_no in range(rounds):
        await one_round(world, cookie, n, round_no, out)
        log(f"  N={n} round {round_no + 1}/{rounds}: {len(out['latency_ms'])} samples so far")
    lat = out.pop("latency_ms")
    frames = out.pop("frame_bytes")
    connect = out.pop("connect_bytes")
    rss = out.pop("rss_mb")
    return {
        **out,
        "samples": len(lat),
        "p50_ms": round(statistics.median(lat), 1),
        "p95_ms": round(pct(lat, 95), 1),
        "max_ms": round(max(lat), 1),
        "frame_bytes_median": int(statistics.median(frames)),
        "frame_bytes_max": max(frames),
        "full_page_bytes": int(statistics.median(connect)),
        "daphne_rss_mb_median": round(statistics.median(rss), 1),
        "daphne_rss_mb_peak": round(max(rss), 1),
        "connect_s": [round(s, 1) for s in out["connect_s"]],
    }


def write_chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["watchers"] for r in results]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(xs, [r["p50_ms"] for r in results], "o-", label="p50")
    ax.plot(xs, [r["p95_ms"] for r in results], "s-", label="p95")
    ax.axhline(25, color="grey", linestyle=":", linewidth=1)
    ax.axhline(150, color="grey", linestyle="--", linewidth=1)
    ax.text(xs[0], 26, "goal at 100: 25 ms", fontsize=8, color="grey")
    ax.text(xs[0], 152, "goal at 1,000: 150 ms", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("websocket watchers on one tenant (one daphne)")
    ax.set_ylabel("commit -> frame (ms)")
    ax.set_title("Live push latency")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watchers", default="10,100,1000", help="comma-separated N")
    parser.add_argument("--rounds", type=int, default=3, help="sagas watched per N")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument(
        "--logs", type=Path, default=None, help="copy daphne's and the cluster's logs here"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="sample daphne with py-spy into this file"
    )
    parser.add_argument("--verbose", action="store_true", help="print each event's latencies")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--chart", type=Path, default=None, help="write the PNG chart")
    args = parser.parse_args(argv)
    try:
        args.watchers = [int(x) for x in args.watchers.split(",") if x.strip()]
    except ValueError:
        parser.error("--watchers takes whole numbers, e.g. 10,100,1000")
    if not args.watchers or min(args.watchers) < 1 or args.rounds < 1:
        parser.error("--watchers and --rounds must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    results = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="push-bench-") as tmp,
            World(args, Path(tmp)) as world,
        ):
            cookie = operator_cookie()
            for n in args.watchers:
                log(f"N={n}: {args.rounds} round(s)")
                results.append(asyncio.run(measure(world, cookie, n, args.rounds)))
    except tta.BenchError as exc:
        log(f"push_latency: {exc}")
        return 1
    print(f"{'watchers':>8} {'p50':>7} {'p95':>7} {'max':>7} {'frame':>7} {'max':>7} "
          f"{'page':>7} {'RSS':>6} {'peak':>6} samples")  # fmt: skip
    for r in results:
        print(
            f"{r['watchers']:>8} {r['p50_ms']:>5}ms {r['p95_ms']:>5}ms {r['max_ms']:>5}ms "
            f"{r['frame_bytes_median']:>6}B {r['frame_bytes_max']:>6}B "
            f"{r['full_page_bytes']:>6}B {r['daphne_rss_mb_median']:>4}MB "
            f"{r['daphne_rss_mb_peak']:>4}MB {r['samples']} ({r['missed']} missed)"
        )
    meta = {
        "date": dt.date.today().isoformat(),
        "command": "bench/push_latency.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "cpus": os.cpu_count(),
        "loadavg_after": os.getloadavg(),
    }
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    if args.chart:
        write_chart(results, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
