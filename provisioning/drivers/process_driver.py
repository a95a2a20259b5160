"""Workloads as local processes, for machines where no Docker Engine answers.

Each replica is one ``workload_server`` process, started in its own session
so it outlives the worker that started it. State lives in files under
<VAR_DIR>/workloads/, so any worker process can find, check and remove what
another one started:

    tpc-<key>-r<i>.replica.json   name, index, pid, port, labels, key
    tpc-<key>-r<i>.port           the port the server bound (written by it)
    tpc-<key>-r<i>.log            the server's stdout and stderr
    tpc-<key>.network.json        the "network": only a record here, so the
                                  traffic-boundary step has something to own

Every method that changes state holds a per-key file lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from provisioning.errors import TransientError

from . import key_lock, var_dir
from .base import (
    LABEL_KEY,
    LABEL_MANAGED,
    LABEL_REPLICA,
    Network,
    Replica,
    network_name,
    replica_name,
)

HOST = "127.0.0.1"
PORT_FILE_TIMEOUT = 5.0  # seconds to wait for a new server to report its port
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
SERVER_MODULE = "provisioning.drivers.workload_server"
# The directory holding the `provisioning` package, so `-m` resolves it
# whatever the worker's current directory is.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# All a replica takes from the worker's environment. Everything else there
# (SECRET_KEY, DATABASE_URL, REDIS_URL, EMAIL_*, ...) is the console's: a
# replica answers the internet on a tenant's behalf and stands in for a
# tenant's workload, so it holds no secret of the console's. The server needs
# no PYTHONPATH: `-m` from PROJECT_ROOT finds the package.
INHERITED_ENV = ("PATH",)


def pid_is_replica(pid: int, name: str) -> bool:
    """Whether ``pid`` is alive and is still our server for ``name``.

    The cmdline check guards against a recycled pid, and it also reads a
    zombie (exited, not yet reaped by its parent) as dead: its cmdline is empty.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else; the cmdline decides
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return SERVER_MODULE.encode() in cmdline and name.encode() in cmdline


# Replicas this process started. Holding the Popen objects lets us collect the
# exit status of one that died (no zombie left behind) and keeps Python from
# warning that a subprocess is "still running" when the object is collected.
_children: dict[int, subprocess.Popen] = {}


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        _children.pop(pid, None)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)  # readers never see a half-written file


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _network(data: dict) -> Network:
    """The Network a record file describes (the file also holds the key)."""
    return Network(name=data["name"], ref=data["ref"], labels=data["labels"])


class ProcessDriver:
    name = "process"

    @property
    def directory(self) -> Path:
        path = var_dir() / "workloads"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _lock(self, key: str):
        return key_lock("process", key)

    def ping(self) -> None:
        """Nothing to reach: local processes are always available."""

    def ensure_image(self, image: str) -> None:
        """No images here: every replica runs the same built-in server."""

    # Network: a record file.

    def _network_path(self, key: str) -> Path:
        return self.directory / f"{network_name(key)}.network.json"

    def find_network(self, key: str) -> Network | None:
        data = _read_json(self._network_path(key))
        return _network(data) if data else None

    def ensure_network(self, key: str, labels: dict) -> Network:
        with self._lock(key):
            existing = self.find_network(key)
            if existing:
                return existing
            name = network_name(key)
            network = Network(
                name=name,
                ref=f"{name}-{uuid.uuid4().hex[:12]}",
                labels={**labels, LABEL_MANAGED: "true", LABEL_KEY: key},
            )
            _write_json(self._network_path(key), {**network.__dict__, "key": key})
            return network

    def remove_network(self, key: str) -> bool:
        with self._lock(key):
            try:
                self._network_path(key).unlink()
            except FileNotFoundError:
                return False
            return True

    # Replicas

    def _state_path(self, name: str) -> Path:
        return self.directory / f"{name}.replica.json"

    def _replica(self, data: dict) -> Replica:
        alive = pid_is_replica(data["pid"], data["name"])
        return Replica(
            name=data["name"],
            index=data["index"],
            host=data.get("host", HOST),
            port=data["port"],
            state="running" if alive else "exited",
            ref=str(data["pid"]),
            labels=data.get("labels", {}),
        )

    def _records(self, key: str | None = None) -> list[dict]:
        records = []
        for path in self.directory.glob("*.replica.json"):
            data = _read_json(path)
            if data and (key is None or data.get("key") == key):
                records.append(data)
        return records

    def ensure_replicas(
        self,
        key: str,
        *,
        image: str,
        count: int,
        memory_mb: int,
        pids_limit: int,
        labels: dict,
        env: dict,
        log=None,
    ) -> list[Replica]:
        # image, memory_mb and pids_limit do not apply: every replica is the
        # same small Python server of this project (about 20 MB resident), not
        # tenant code, with no limits of its own.
        log = log or (lambda message: None)
        replicas = []
        with self._lock(key):
            for index in range(1, count + 1):
                name = replica_name(key, index)
                data = _read_json(self._state_path(name))
                if data and pid_is_replica(data["pid"], name):
                    replica, verb = self._replica(data), "found running"
                else:
                    if data:
                        _reap(data["pid"])
                    replica = self._start(key, index, labels, env)
                    verb = "restarted exited" if data else "started"
                log(f"{verb} process {name} (pid {replica.ref}) on {HOST}:{replica.port}")
                replicas.append(replica)
        return replicas

    def _start(self, key: str, index: int, labels: dict, env: dict) -> Replica:
        name = replica_name(key, index)
        port_file = self.directory / f"{name}.port"
        port_file.unlink(missing_ok=True)
        child_env = {
            **{var: os.environ[var] for var in INHERITED_ENV if var in os.environ},
            **{k: str(v) for k, v in env.items()},
            "REPLICA": str(index),
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [sys.executable, "-m", SERVER_MODULE, "--host", HOST, "--port", "0"]
        cmd += ["--port-file", str(port_file), "--name", name]
        with open(self.directory / f"{name}.log", "ab") as logfile:
            proc = subprocess.Popen(
                cmd,
                cwd=PROJECT_ROOT,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                close_fds=True,
                # Its own session: it outlives this worker, and removal can
                # signal its whole process group.
                start_new_session=True,
            )
        _children[proc.pid] = proc
        port = self._wait_for_port(proc, port_file, name)
        data = {
            "name": name,
            "index": index,
            "key": key,
            "pid": proc.pid,
            "host": HOST,
            "port": port,
            "labels": {**labels, LABEL_MANAGED: "true", LABEL_KEY: key, LABEL_REPLICA: str(index)},
            "started_at": time.time(),
        }
        _write_json(self._state_path(name), data)
        return self._replica(data)

    def _wait_for_port(self, proc: subprocess.Popen, port_file: Path, name: str) -> int:
        deadline = time.monotonic() + PORT_FILE_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                return int(port_file.read_text())
            if proc.poll() is not None:
                raise TransientError(
                    f"workload process {name} exited with {proc.returncode} before serving; "
                    f"see {self.directory / (name + '.log')}"
                )
            time.sleep(0.01)
        _stop(proc.pid, name)
        raise TransientError(
            f"workload process {name} did not report its port within {PORT_FILE_TIMEOUT:g} s",
            category="readiness_timeout",
        )

    def list_replicas(self, key: str) -> list[Replica]:
        return sorted((self._replica(d) for d in self._records(key)), key=lambda r: r.index)

    def remove_replicas(self, key: str) -> int:
        removed = 0
        with self._lock(key):
            for data in self._records(key):
                self._remove(data)
                removed += 1
        return removed

    def remove_replica(self, key: str, index: int) -> bool:
        with self._lock(key):
            data = _read_json(self._state_path(replica_name(key, index)))
            if not data:
                return False
            self._remove(data)
            return True

    def _remove(self, data: dict) -> None:
        name = data["name"]
        _stop(data["pid"], name)
        for suffix in (".replica.json", ".port", ".log"):
            (self.directory / f"{name}{suffix}").unlink(missing_ok=True)

    def list_managed(self) -> dict:
        networks = []
        for path in self.directory.glob("*.network.json"):
            data = _read_json(path)
            if data:
                networks.append(_network(data))
        return {
            "replicas": sorted((self._replica(d) for d in self._records()), key=lambda r: r.name),
            "networks": sorted(networks, key=lambda n: n.name),
        }


def _stop(pid: int, name: str) -> None:
    """SIGTERM the replica's process group, then SIGKILL it after a short grace."""
    if not pid_is_replica(pid, name):
        _reap(pid)  # dead already (or the pid now belongs to someone else)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)  # pid == pgid: started with start_new_session
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_is_replica(pid, name):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not pid_is_replica(pid, name):
            return
        time.sleep(0.02)
