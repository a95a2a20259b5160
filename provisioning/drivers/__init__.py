"""Workload drivers: Docker Engine when one answers, local processes otherwise.

    from provisioning.drivers import get_driver
    driver = get_driver()          # settings.WORKLOAD_DRIVER: auto | docker | process

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

DRIVER_NAMES = ("auto", "docker", "process")
DEFAULT_WORKLOAD_IMAGE = "tenant-console/workload:2"
AUTO_PING_TIMEOUT = 2.0  # seconds; "auto" must not hang a worker on a dead socket
KEY_LOCK_BUCKETS = 64  # per-key locks share this many files, so var/locks stays small

_lock = threading.Lock()
# Keyed by pid: a forked worker must not reuse its parent's docker client
# (a shared connection pool across fork mixes up responses).
_drivers: dict[tuple[int, str], object] = {}
_auto_choice: dict[int, str] = {}


def get_driver(name: str | None = None):
    """The driver named, or ``settings.WORKLOAD_DRIVER``; one instance per process."""
    if name is None:
        from django.conf import settings

        name = getattr(settings, "WORKLOAD_DRIVER", "auto") or "auto"
    if name not in DRIVER_NAMES:
        raise ValueError(f"unknown workload driver {name!r}; expected one of {DRIVER_NAMES}")
    if name == "auto":
        name = _resolve_auto()
    key = (os.getpid(), name)
    with _lock:
        driver = _drivers.get(key)
        if driver is None:
            driver = _drivers[key] = _make(name)
        return driver


def clear_cache() -> None:
    """Forget cached drivers and the "auto" choice (tests, or after dockerd restarts)."""
    with _lock:
        _drivers.clear()
        _auto_choice.clear()


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


def _resolve_auto() -> str:
    pid = os.getpid()
    with _lock:
        choice = _auto_choice.get(pid)
    if choice is None:
        ok, reason = docker_answers()
        choice = "docker" if ok else "process"
        if not ok:
            logger.warning("no Docker Engine answered (%s); using the process driver", reason)
        with _lock:
            _auto_choice[pid] = choice
    return choice


def _make(name: str):
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
