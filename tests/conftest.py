"""Shared fixtures: named actors, plans, an in-process runner and a real qcluster."""

from __future__ import annotations

import importlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import connection
from django.db.backends.postgresql.operations import DatabaseOperations
from django.utils import timezone

from provisioning import actions, dbroles, engine
from provisioning import faults as fault_specs
from provisioning.models import StepRun
from tenants.models import Plan, Tenant

ROOT = Path(__file__).resolve().parent.parent
_seed = importlib.import_module("tenants.migrations.0002_seed_plans_and_groups")
# TEST_APP_ROLE=NAME runs the suite as the role `create_app_role NAME` makes,
# as production runs (docs/DATABASE.md); unset, as the owner.
APP_ROLE = os.environ.get("TEST_APP_ROLE", "")
if APP_ROLE and os.environ.get("PYTEST_XDIST_WORKER"):
    # A role is the server's, not the database's: each xdist worker makes its
    # own, so two workers never grant to one role at the same moment.
    APP_ROLE += "_" + os.environ["PYTEST_XDIST_WORKER"]
# The owner's USER and PASSWORD, whichever role the suite runs as.
_owner_login: dict = {}


@contextmanager
def signed_in_as(user: str, password: str):
    """Connections opened inside sign in as ``user``: this thread's, others', subprocesses'."""
    db = connection.settings_dict  # the one dict every thread's connection reads
    before = {"USER": db["USER"], "PASSWORD": db["PASSWORD"]}
    connection.close()
    db.update(USER=user, PASSWORD=password)
    try:
        yield
    finally:
        connection.close()
        db.update(before)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """The test database, migrated by its owner; then, with TEST_APP_ROLE, used as the app role.

    The role is made by create_app_role's own function, so what passes here
    passes with production's privileges. pytest-django drops the database
    after this fixture has signed back in as the owner.
    """
    db = connection.settings_dict
    _owner_login.update(USER=db["USER"], PASSWORD=db["PASSWORD"])
    if not APP_ROLE:
        yield
        return
    password = secrets.token_urlsafe(24)
    with django_db_blocker.unblock():
        connection.ensure_connection()
        dbroles.ensure_app_role(connection.connection, APP_ROLE, password)
    with signed_in_as(APP_ROLE, password):
        yield


_execute_sql_flush = DatabaseOperations.execute_sql_flush


def _flush_as_owner(ops, sql_list):
    """Empty the tables between transactional tests: as the owner, audit triggers off.

    Django flushes with one TRUNCATE of every table, which migration 0008's
    trigger refuses and the app role may not run at all. The owner disables
    the audit table's triggers inside the flush's own transaction: TRUNCATE
    holds the table's exclusive lock until commit, so no other session ever
    sees them off, and a failure rolls the ALTER back with the rest.
    """
    statements = [
        "ALTER TABLE provisioning_auditevent DISABLE TRIGGER USER",
        *sql_list,
        "ALTER TABLE provisioning_auditevent ENABLE TRIGGER USER",
    ]
    if not APP_ROLE:
        return _execute_sql_flush(ops, statements)
    # The app's connection options (its search_path); commits on leaving.
    with psycopg.connect(owner_database_url(), **connection.settings_dict["OPTIONS"]) as owner:
        for statement in statements:
            owner.execute(statement)


@pytest.fixture(autouse=True, scope="session")
def flush_as_owner():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatabaseOperations, "execute_sql_flush", _flush_as_owner)
        yield


@pytest.fixture
def plans(db):
    """The seeded plans and groups (transactional tests flush them away)."""
    for plan in _seed.PLANS:
        Plan.objects.update_or_create(
            name=plan["name"], defaults={**plan, "image": settings.WORKLOAD_IMAGE}
        )
    for name in ("operators", "viewers"):
        Group.objects.get_or_create(name=name)
    return {plan.name: plan for plan in Plan.objects.all()}


def _user(username: str, group: str | None) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", "pw-" + username * 2)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def operator(plans):
    return _user("olivia", "operators")


@pytest.fixture
def viewer(plans):
    return _user("victor", "viewers")


@pytest.fixture
def outsider(plans):
    return _user("oscar", None)


@pytest.fixture
def faults_enabled(settings):
    settings.PROVISIONING_FAULTS_ENABLED = True


@pytest.fixture
def fast_backoff(settings):
    settings.PROVISIONING_BACKOFF_BASE = 0.05
    settings.PROVISIONING_BACKOFF_MAX = 0.2


@pytest.fixture
def task_queue(db):
    """The configured django-q2 broker (ORM, or Redis with REDIS_URL), emptied before and after.

    ``task_queue.queue_size()`` counts what was enqueued and not yet taken.
    """
    from django_q.brokers import get_broker

    broker = get_broker()
    broker.purge_queue()
    yield broker
    broker.purge_queue()


def new_tenant(
    slug: str = "acme", *, plan: str = "free", org: str = "demo", user=None, faults=()
) -> Tenant:
    """Create a tenant as an operator would; ``faults`` are specs such as "validate:hang:2"."""
    return actions.create_tenant(
        slug=slug,
        org=org,
        plan=plan,
        admin_email="admin@example.com",
        user=user,
        faults=[fault_specs.parse(spec) for spec in faults],
    )


def drive(tenant: Tenant) -> str:
    """Advance the tenant's latest run in this process until it ends, as the pumps would.

    Each time the run parks, wait until it is due (or a cancel makes it due),
    checking parked stalls as a pump does, and advance it again.
    """
    run = actions.latest_run(tenant)
    while (result := engine.advance(run.pk)) == "parked":
        while True:
            engine._check_parked_stalls()
            run.refresh_from_db(fields=["wake_at", "cancel_requested", "lease_owner"])
            if run.cancel_requested or run.wake_at is None or run.lease_owner:
                break
            left = (run.wake_at - timezone.now()).total_seconds()
            if left <= 0:
                break
            time.sleep(min(left, 0.05))
    return result


def drive_in_background(tenant: Tenant):
    """Drive the run in a thread, as a busy worker would, while the test watches.

    Returns the started thread and a dict that gets ``result`` when it ends.
    """
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = drive(tenant)
        finally:
            connection.close()  # the thread's own connection

    worker = threading.Thread(target=work)
    worker.start()
    return worker, outcome


def database_url(db: dict | None = None) -> str:
    """The URL of the database the tests use (the test database, not the dev one)."""
    db = db or connection.settings_dict
    auth = quote(db["USER"] or "postgres")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"])
    host = db["HOST"] or ""
    if host.startswith("/"):
        return f"postgresql://{auth}@/{db['NAME']}?host={quote(host)}"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgresql://{auth}@{host}{port}/{db['NAME']}"


def owner_database_url() -> str:
    """The test database as its owner (who migrated it), whichever role the suite runs as."""
    return database_url({**connection.settings_dict, **_owner_login})


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        RESOURCE_NAMESPACE=settings.RESOURCE_NAMESPACE,
        WORKLOAD_DRIVER=settings.WORKLOAD_DRIVER,
        PROVISIONING_FAULTS_ENABLED="1",
        DJANGO_SETTINGS_MODULE="console.settings",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_python(args: list[str], *, umask: int = -1, **env) -> subprocess.CompletedProcess:
    """``python ARGS`` in the project, on the test database; an env value of None unsets it."""
    environment = subprocess_env(**{k: v for k, v in env.items() if v is not None})
    for name in [k for k, v in env.items() if v is None]:
        environment.pop(name, None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        umask=umask,
    )


def manage(*args: str, **env) -> subprocess.CompletedProcess:
    """``manage.py ARGS`` as a subprocess (see run_python)."""
    return run_python(["manage.py", *args], **env)


def stop_process(proc: subprocess.Popen, timeout: float, *, group: bool = False) -> None:
    """SIGTERM the process (or its whole session with ``group``); SIGKILL all after ``timeout``."""
    if proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Cluster:
    """A real `manage.py qcluster` on the test database."""

    def __init__(self, tmp_path: Path, name: str = "cluster", **env):
        self.log_path = tmp_path / f"{name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=subprocess_env(**env),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while "running." not in self.log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"qcluster did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)  # qcluster stops its own workers
        self.log.close()


@pytest.fixture
def cluster_factory(transactional_db, tmp_path):
    clusters: list[Cluster] = []

    def start(name: str = "cluster", **env) -> Cluster:
        cluster = Cluster(tmp_path, name, **env)
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()


def wait_for(predicate, timeout: float = 60, poll: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def wait_for_step(tenant: Tenant, step_id: str, status: str = "running", timeout: float = 60):
    """Wait until the tenant's ``step_id`` is in ``status`` (a worker is inside it)."""
    wait_for(
        lambda: StepRun.objects.filter(run__tenant=tenant, step_id=step_id, status=status).exists(),
        timeout=timeout,
        message=f"{step_id} to be {status}",
    )


@pytest.fixture(autouse=True, scope="session")
def remove_leftover_workloads():
    """Whatever a failing test left on the engine goes at the end of the session."""
    yield
    from provisioning.drivers import get_driver

    prefix = f"tpc-{settings.RESOURCE_NAMESPACE}"
    try:
        driver = get_driver()
        managed = driver.list_managed()
    except Exception:
        return
    keys = {r.name[4:].rsplit("-r", 1)[0] for r in managed["replicas"] if r.name.startswith(prefix)}
    keys |= {n.name[4:] for n in managed["networks"] if n.name.startswith(prefix)}
    for key in keys:
        driver.remove_replicas(key)
        driver.remove_network(key)


# Browser fixtures live beside their helpers; importing them here registers them.
from tests.browser_support import chromium, console, open_page  # noqa: E402, F401


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Fixtures read item.rep_call to know whether the test failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
