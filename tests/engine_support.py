"""A Docker Engine of the tests' own, to stop and start again.

Other sessions' tests use the machine's dockerd, so a test that restarts an
engine restarts only this one: a dockerd with its own ``--data-root``,
``--exec-root``, ``--pidfile`` and unix socket, in its own network
namespace (its bridges, iptables rules and published ports stay there),
joined to the host by a veth pair. Replicas publish on the namespace's end
of that pair (``WORKLOAD_PUBLISH_HOST``), which the host reaches directly,
so the console's proxy and workers run as usual in the host namespace and
talk to the engine over its socket.

It is stopped with SIGTERM to the pid in its pid file, and started again
with the same command line, as an operator restarting dockerd would.

    engine = OwnEngine.up()        # ~0.5 s (or the own_engine fixture)
    engine.env()                   # DOCKER_HOST, WORKLOAD_PUBLISH_HOST for subprocesses
    engine.restart()
    engine.down()

Needs root, dockerd, iproute2 and nsenter (util-linux).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def missing_tools() -> str:
    """Why this machine cannot run an engine of the tests' own ("" when it can)."""
    if os.geteuid() != 0:
        return "an engine of the tests' own needs root (network namespaces)"
    for tool in ("dockerd", "ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return ""


@pytest.fixture(scope="module")
def own_engine():
    """An engine of the tests' own for one test module (import it to use it)."""
    if why := missing_tools():
        pytest.skip(why)
    engine = OwnEngine.up()
    yield engine
    engine.down()


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


class OwnEngine:
    def __init__(self, tag: str):
        self.tag = tag  # short: it names interfaces (15 characters at most) and the netns
        # A short root: containerd's sockets live under the exec root, and a
        # unix socket path may not exceed 108 bytes.
        self.root = Path(f"/tmp/tpce-{tag}")
        self.netns = f"tpce-{tag}"
        self.host_if, self.ns_if = f"te{tag}h", f"te{tag}n"
        # A /30 of 10.251.0.0/16 per tag, the host's end .1, the namespace's .2.
        block = (int("".join(c for c in tag if c.isdigit()) or 0) % 16384) * 4
        self.host_ip = f"10.251.{block // 256}.{block % 256 + 1}"
        self.ns_ip = f"10.251.{block // 256}.{block % 256 + 2}"
        self.socket = self.root / "docker.sock"
        self.pidfile = self.root / "docker.pid"
        self.log_path = self.root / "dockerd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict:
        """What a console process needs to use this engine."""
        return {"DOCKER_HOST": self.url, "WORKLOAD_PUBLISH_HOST": self.ns_ip}

    def dockerd_args(self) -> list[str]:
        return [
            "dockerd",
            "--config-file", str(self.root / "daemon.json"),
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.pidfile),
            "-H", self.url,
            "--cgroup-parent", f"/{self.netns}",
        ]  # fmt: skip

    def command(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *self.dockerd_args()]

    @classmethod
    def up(cls, tag: str | None = None) -> OwnEngine:
        engine = cls(tag or str(os.getpid()))
        engine.prepare()
        engine.plumb()
        engine.start()
        return engine

    def prepare(self) -> None:
        """Remove what a killed earlier run left behind; write the daemon's own config."""
        self.down()
        self.root.mkdir(parents=True)
        # Its own key file: dockerd would otherwise share /etc/docker/key.json.
        (self.root / "daemon.json").write_text(
            f'{{"deprecated-key-path": "{self.root / "key.json"}"}}'
        )

    def plumb(self) -> None:
        """The namespace, joined to the host by a veth pair (a /30)."""
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", self.host_if, "type", "veth",
             "peer", "name", self.ns_if, "netns", self.netns)  # fmt: skip
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run("ip", "-n", self.netns, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _run("ip", "-n", self.netns, "link", "set", self.ns_if, "up")
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")

    def start(self) -> float:
        """Start dockerd; the seconds until it answered a ping."""
        started = time.monotonic()
        log = open(self.log_path, "a")  # noqa: SIM115  (the child keeps it)
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() - started > START_TIMEOUT:
                raise RuntimeError(f"dockerd did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        return time.monotonic() - started

    def answers(self) -> bool:
        try:
            client = docker.DockerClient(base_url=self.url, version="1.41", timeout=2)
            try:
                return client.ping()
            finally:
                client.close()
        except Exception:
            return False

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pidfile.read_text().strip())
        return None

    def stop(self) -> None:
        """SIGTERM to the pid in the pid file; returns once dockerd has exited."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid):
            if self.proc is not None and self.proc.pid == pid:
                self.proc.poll()  # reap our own child, or it stays a zombie
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)

    def restart(self) -> float:
        """Stop with SIGTERM, start with the same command line; seconds until it answered."""
        self.stop()
        return self.start()

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, version="1.41", timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        return ""

    def down(self) -> None:
        """Remove everything: containers, the daemon, its namespace, mounts and files."""
        if self.answers():
            with contextlib.suppress(Exception):
                client = self.client()
                for container in client.containers.list(all=True):
                    container.remove(force=True)
                client.close()
        self.stop()
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        for mount in reversed(_mounts_under(self.root)):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        with contextlib.suppress(FileNotFoundError):
            for cgroup in Path("/sys/fs/cgroup").glob(f"*/{self.netns}"):
                for directory in sorted(cgroup.rglob("*"), reverse=True):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        # A zombie (exited, not yet reaped by its parent) is gone for our purpose.
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/mounts") as f:
        return sorted(line.split()[1] for line in f if line.split()[1].startswith(prefix))
