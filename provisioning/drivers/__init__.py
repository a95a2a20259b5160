"""Workload drivers: Docker Engine when one answers, local processes otherwise;
a Docker Swarm (``WORKLOAD_DRIVER=swarm``, never chosen by "auto") past one host.

    from provisioning.drivers import driver_for, get_driver
    driver = driver_for(tenant)    # the driver that holds this tenant's workloads
    driver = get_driver("docker")  # one by name; get_driver() reads WORKLOAD_DRIVER

A tenant's workloads live where they were made, so everything that touches
them (its steps, their undo, decommission, repair, reconcile) goes through
``driver_for(tenant)``: the driver recorded on the tenant
(``Tenant.workload_driver``), chosen when its first run first needed one.
``WORKLOAD_DRIVER=auto`` chooses then, by asking the engine, not once per
process: a worker that started while dockerd was down must not send a Docker
tenant's decommission to the process driver.

Django and the driver modules are imported lazily: ``workload_server`` lives in
this package and is started as ``python -m``, which runs this file first, and a
replica should not pay for importing Django.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import zlib
from pathlib import Path

logger = logging.getLogger(__name__)

DRIVER_NAMES = ("auto", "docker", "process", "swarm")
DEFAULT_WORKLOAD_IMAGE = "tenant-console/workload:2"
AUTO_PING_TIMEOUT = 2.0  # seconds; "auto" must not hang a worker on a dead socket
KEY_LOCK_BUCKETS = 64  # per-key locks share this many files, so var/locks stays small

_lock = threading.Lock()
# Keyed by pid: a forked worker must not reuse its parent's docker client
# (a shared connection pool across fork mixes up responses).
_drivers: dict[tuple[int, str], object] = {}


def configured() -> str:
    """settings.WORKLOAD_DRIVER: a driver's name, or "auto"."""
    from django.conf import settings

    return getattr(settings, "WORKLOAD_DRIVER", "auto") or "auto"


def choose(name: str | None = None) -> str:
    """A driver's name for work starting now: ``name`` (default: the setting);
    "auto" is "docker" when the engine answers now, else "process"."""
    name = name or configured()
    if name not in DRIVER_NAMES:
        raise ValueError(f"unknown workload driver {name!r}; expected one of {DRIVER_NAMES}")
    if name != "auto":
        return name
    ok, reason = docker_answers()
    if not ok:
        logger.warning("no Docker Engine answered (%s); choosing the process driver", reason)
    return "docker" if ok else "process"


def get_driver(name: str | None = None):
    """The driver named (see ``choose``); one instance per name per process."""
    name = choose(name)
    key = (os.getpid(), name)
    with _lock:
        driver = _drivers.get(key)
        if driver is None:
            driver = _drivers[key] = _make(name)
        return driver


def driver_for(tenant):
    """The driver that holds ``tenant``'s workloads: the one recorded on it.

    A tenant with none recorded (its first run has not touched workloads
    yet) gets one chosen now, recorded with a conditional UPDATE so that two
    workers choosing at once agree on the first choice.
    """
    if not tenant.workload_driver:
        from tenants.models import Tenant

        Tenant.objects.filter(pk=tenant.pk, workload_driver="").update(workload_driver=choose())
        tenant.workload_driver = (
            Tenant.objects.filter(pk=tenant.pk).values_list("workload_driver", flat=True).get()
        )
    return get_driver(tenant.workload_driver)


def drivers_in_use() -> list[str]:
    """Every driver that may hold this installation's workloads: those recorded
    on tenants, and the one new tenants would get now (reconcile lists them all)."""
    from tenants.models import Tenant

    names = set(
        Tenant.objects.exclude(workload_driver="").values_list("workload_driver", flat=True)
    )
    names.add(choose())
    return sorted(n for n in names if n in DRIVER_NAMES)


def clear_cache() -> None:
    """Forget cached drivers (tests)."""
    with _lock:
        _drivers.clear()


def docker_answers(timeout: float = AUTO_PING_TIMEOUT) -> tuple[bool, str]:
    """Whether the engine at DOCKER_HOST (or the default socket) answers a ping."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure means "not usable", with the reason
        return False, f"{exc.__class__.__name__}: {exc}"
    return True, "ok"


def _make(name: str):
    if name == "swarm":
        from .swarm_driver import SwarmDriver

        return SwarmDriver()
    if name == "docker":
        from .docker_driver import DockerDriver

        return DockerDriver()
    from .process_driver import ProcessDriver

    return ProcessDriver()


# Helpers shared by the drivers.


def var_dir() -> Path:
    """settings.VAR_DIR, or <BASE_DIR>/var; read on each call so tests can override it."""
    from django.conf import settings

    path = getattr(settings, "VAR_DIR", None)
    if path is None:
        base = getattr(settings, "BASE_DIR", None) or Path(__file__).resolve().parents[2]
        path = Path(base) / "var"
    return Path(path)


def workload_image() -> str:
    from django.conf import settings

    return settings.WORKLOAD_IMAGE or DEFAULT_WORKLOAD_IMAGE


@contextlib.contextmanager
def file_lock(name: str):
    """An exclusive flock on <VAR_DIR>/locks/<name>.lock, across processes and threads.

    flock() locks belong to the open file description, so two threads that
    each open the file exclude each other too. Lock files are never deleted:
    unlinking a lock file that another process is waiting on breaks mutual
    exclusion.
    """
    directory = var_dir() / "locks"
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def key_lock(kind: str, key: str):
    """file_lock for one key, hashed into a fixed set of lock files.

    Two keys may share a file and then wait on each other briefly, which is
    harmless as long as no code holds one key's lock while taking another's.
    """
    return file_lock(f"{kind}-{zlib.crc32(key.encode()) % KEY_LOCK_BUCKETS:02d}")
