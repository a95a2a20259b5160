"""A real two-node Docker Swarm of the tests' own, with a registry the nodes pull from.

Each node is an engine of the tests' own (``engine_support.OwnEngine``: its
own dockerd, ``--data-root``, ``--exec-root``, pid file and socket) in its own
network namespace, with its own hostname (a UTS namespace), so Swarm sees two
hosts. The nodes and the host meet on a bridge in a third namespace, the
"switch": the host's leg is ``.254`` of a /24, the nodes are ``.1`` and ``.2``.
Node 1 is the manager and also runs Debian's ``docker-registry`` on
``.1:5000`` (every node may pull from it: ``--insecure-registry``).

    lab = SwarmLab.up()           # ~2 s (or the session fixture ``swarm_lab``)
    lab.env()                     # DOCKER_HOST (the manager), WORKLOAD_REGISTRY, ...
    lab.nodes[1].client()         # node 2's own engine (its containers, to kill one)
    lab.down()                    # leaves no daemon, namespace, mount or file

What this machine's kernel does not offer shapes the driver (MACHINE.md): no
IPVS, so no ingress routing mesh (ports are published in host mode); overlay
networks work with ``endpoint_mode=dnsrr``.

Needs root, dockerd, docker-registry, iproute2 and nsenter/unshare (util-linux).
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

from tests.engine_support import OwnEngine, _alive, _run

REGISTRY_PORT = 5000
JOIN_TIMEOUT = 30.0


def missing_tools() -> str:
    """Why this machine cannot run a swarm of the tests' own ("" when it can)."""
    if os.geteuid() != 0:
        return "a swarm of the tests' own needs root (network namespaces)"
    for tool in ("dockerd", "docker-registry", "ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install.sh installs it)"
    probe = f"tpcs-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def require_swarm() -> None:
    """Skip with the reason when no swarm can be made; fail instead under REQUIRE_DOCKER=1."""
    why = missing_tools()
    if not why:
        return
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"{why} (REQUIRE_DOCKER=1 forbids skipping)", pytrace=False)
    pytest.skip(why)


class SwarmNode(OwnEngine):
    """One node: an own engine on the lab's bridge, with a hostname of its own."""

    def __init__(self, lab: SwarmLab, number: int):
        super().__init__(f"{lab.tag}n{number}")
        self.lab = lab
        self.number = number
        self.hostname = f"{lab.name}-n{number}"
        self.ns_ip = f"{lab.prefix}.{number}"
        self.host_ip = lab.host_ip
        self.ns_if, self.host_if = f"vx{number}", f"{lab.tag}p{number}"  # host_if: the switch's leg

    def dockerd_args(self) -> list[str]:
        return [*super().dockerd_args(), "--insecure-registry", f"{self.lab.prefix}.0/24"]

    def command(self) -> list[str]:
        # A UTS namespace of its own, so each node has its own hostname (Swarm's node name).
        inner = " ".join(self.dockerd_args())
        return [
            "nsenter", f"--net=/run/netns/{self.netns}",
            "unshare", "--uts", "sh", "-c", f"hostname {self.hostname} && exec {inner}",
        ]  # fmt: skip

    def plumb(self) -> None:
        lab = self.lab
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", self.ns_if, "netns", self.netns, "type", "veth",
             "peer", "name", self.host_if, "netns", lab.switch)  # fmt: skip
        _run("ip", "-n", lab.switch, "link", "set", self.host_if, "master", "br0", "up")
        _run("ip", "-n", self.netns, "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
        _run("ip", "-n", self.netns, "link", "set", self.ns_if, "up")
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=30)

    def down(self) -> None:
        if self.answers():
            with contextlib.suppress(Exception):
                client = self.client()
                client.swarm.leave(force=True)
                client.close()
        super().down()


class SwarmLab:
    """Two nodes (1: manager and registry, 2: worker) on a bridge of the lab's own."""

    def __init__(self, tag: str | None = None):
        self.tag = tag or f"s{os.getpid() % 100000}"  # short: it names interfaces
        self.name = "swarm"
        block = int("".join(c for c in self.tag if c.isdigit()) or "0") % 250
        self.prefix = f"10.252.{block}"
        self.host_ip = f"{self.prefix}.254"
        self.switch = f"tpce-{self.tag}lan"
        self.host_if = f"{self.tag}h"
        self.root = Path(f"/tmp/tpce-{self.tag}")
        self.nodes = [SwarmNode(self, 1), SwarmNode(self, 2)]
        self.registry_proc: subprocess.Popen | None = None

    @property
    def manager(self) -> SwarmNode:
        return self.nodes[0]

    @property
    def worker(self) -> SwarmNode:
        return self.nodes[1]

    @property
    def registry(self) -> str:
        return f"{self.manager.ns_ip}:{REGISTRY_PORT}"

    def env(self) -> dict:
        """What a console process needs to run tenants on this swarm."""
        return {
            "WORKLOAD_DRIVER": "swarm",
            "DOCKER_HOST": self.manager.url,
            "WORKLOAD_REGISTRY": self.registry,
        }

    @classmethod
    def up(cls, tag: str | None = None) -> SwarmLab:
        lab = cls(tag)
        lab.down()  # whatever a killed earlier run left behind
        started = time.monotonic()
        lab.root.mkdir(parents=True)
        _run("ip", "netns", "add", lab.switch)
        _run("ip", "-n", lab.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", lab.switch, "link", "set", "br0", "up")
        _run("ip", "link", "add", lab.host_if, "type", "veth",
             "peer", "name", "host", "netns", lab.switch)  # fmt: skip
        _run("ip", "-n", lab.switch, "link", "set", "host", "master", "br0", "up")
        _run("ip", "addr", "add", f"{lab.host_ip}/24", "dev", lab.host_if)
        _run("ip", "link", "set", lab.host_if, "up")
        try:
            for node in lab.nodes:
                node.prepare()
                node.plumb()
                node.start()
            lab._start_registry()
            manager = lab.manager.client()
            manager.swarm.init(
                advertise_addr=lab.manager.ns_ip, listen_addr=f"{lab.manager.ns_ip}:2377"
            )
            token = manager.swarm.attrs["JoinTokens"]["Worker"]
            worker = lab.worker.client()
            worker.swarm.join(
                remote_addrs=[f"{lab.manager.ns_ip}:2377"],
                join_token=token,
                advertise_addr=lab.worker.ns_ip,
                listen_addr=f"{lab.worker.ns_ip}:2377",
            )
            deadline = time.monotonic() + JOIN_TIMEOUT
            while len(lab.ready_nodes(manager)) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not join the swarm")
                time.sleep(0.1)
            manager.close()
            worker.close()
        except BaseException:
            lab.down()
            raise
        lab.up_seconds = time.monotonic() - started
        return lab

    @staticmethod
    def ready_nodes(client) -> list[str]:
        return [
            n.attrs["Description"]["Hostname"]
            for n in client.nodes.list()
            if n.attrs["Status"]["State"] == "ready"
        ]

    def _start_registry(self) -> None:
        directory = self.root / "registry"
        (directory / "data").mkdir(parents=True)
        config = directory / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {directory / 'data'}}}}}\n"
            f'http: {{addr: "{self.registry}"}}\n'
        )
        log = open(directory / "log", "a")  # noqa: SIM115  (the child keeps it)
        self.registry_proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.manager.netns}",
             "docker-registry", "serve", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        (directory / "pid").write_text(str(self.registry_proc.pid))
        deadline = time.monotonic() + 10
        while not self._registry_answers():
            if self.registry_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {self.registry_log()}")
            time.sleep(0.05)

    def _registry_answers(self) -> bool:
        import http.client

        conn = http.client.HTTPConnection(self.manager.ns_ip, REGISTRY_PORT, timeout=1)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def registry_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "registry" / "log").read_text()[-2000:]
        return ""

    def down(self) -> None:
        """Remove everything: services, both daemons, the registry, namespaces, files."""
        with contextlib.suppress(Exception):
            if self.manager.answers():
                client = self.manager.client()
                for service in client.services.list():
                    service.remove()
                client.close()
        for node in reversed(self.nodes):
            node.down()
        pidfile = self.root / "registry" / "pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            if self.registry_proc is None or self.registry_proc.pid == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 5
                while _alive(pid) and time.monotonic() < deadline:
                    if self.registry_proc is not None:
                        self.registry_proc.poll()
                    time.sleep(0.05)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def swarm_lab():
    """A two-node swarm and its registry for the whole session (import it to use it)."""
    require_swarm()
    lab = SwarmLab.up()
    yield lab
    lab.down()
