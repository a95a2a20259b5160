"""Workload drivers against the real Docker Engine and real local processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker.errors
import pytest

from provisioning import drivers
from provisioning.drivers.base import LABEL_KEY, LABEL_MANAGED, LABEL_TENANT, Replica
from provisioning.drivers.docker_driver import DockerDriver, build_context
from provisioning.drivers.process_driver import ProcessDriver, pid_is_replica
from provisioning.drivers.readiness import probe
from provisioning.errors import PermanentError, TransientError
from tests.docker_support import docker_driver  # noqa: F401 (a fixture)

IMAGE = drivers.DEFAULT_WORKLOAD_IMAGE
ENV = {"TENANT_SLUG": "acme", "TENANT_ORG": "demo"}
LABELS = {LABEL_TENANT: "4242"}


@pytest.fixture(autouse=True)
def var_dir(settings, tmp_path):
    """Locks and process-driver state go to a per-test directory."""
    settings.VAR_DIR = tmp_path
    settings.WORKLOAD_IMAGE = IMAGE
    return tmp_path


def new_key() -> str:
    return f"test{uuid.uuid4().hex[:8]}"


def ensure(driver, key: str, count: int, log=None) -> list[Replica]:
    return driver.ensure_replicas(
        key,
        image=IMAGE,
        count=count,
        memory_mb=64,
        pids_limit=32,
        labels=LABELS,
        env=ENV,
        log=log,
    )


def wait_ready(replicas: list[Replica], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for replica in replicas:
        while True:
            ok, reason = probe(replica)
            if ok:
                assert reason == "200 ok"
                break
            assert time.monotonic() < deadline, f"{replica.name} not ready: {reason}"
            time.sleep(0.02)


def landing_page(replica: Replica) -> str:
    with urllib.request.urlopen(replica.base_url + "/", timeout=5) as resp:
        return resp.read().decode()


# Docker driver


@pytest.fixture
def docker_key(docker_driver):  # noqa: F811 (the fixture imported above)
    key = new_key()
    yield key
    docker_driver.remove_replicas(key)
    docker_driver.remove_network(key)


def key_containers(driver: DockerDriver, key: str) -> list:
    return driver.client.containers.list(all=True, filters={"label": f"{LABEL_KEY}={key}"})


@pytest.mark.docker
def test_ensure_image_builds_the_workload_image_once(docker_driver, settings):  # noqa: F811
    # A tag of its own, so the test really starts from "missing" without
    # pulling the shared tag from under other tests' containers.
    tag = f"tenant-console/workload-test:{uuid.uuid4().hex[:8]}"
    settings.WORKLOAD_IMAGE = tag
    assert not docker_driver.image_exists(tag)
    try:
        errors = []

        def build():
            try:
                docker_driver.ensure_image(tag)
            except Exception as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=build) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert docker_driver.image_exists(tag)
        docker_driver.ensure_image(tag)  # present: a no-op
        docker_driver.build_image(tag)  # building again is harmless
        assert docker_driver.image_exists(tag)
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_driver.client.images.remove(tag)


@pytest.mark.docker
def test_ensure_image_refuses_other_missing_images(docker_driver):  # noqa: F811
    with pytest.raises(PermanentError) as err:
        docker_driver.ensure_image(f"nowhere/missing:{uuid.uuid4().hex[:8]}")
    assert err.value.category == "image_missing"


def test_unreachable_engine_is_a_transient_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    driver = DockerDriver()
    with pytest.raises(TransientError) as err:
        driver.ping()
    assert err.value.category == "docker_unreachable"
    with pytest.raises(TransientError) as err:
        driver.find_network("whatever")
    assert err.value.category == "docker_unreachable"


def test_build_context_without_busybox_says_what_to_install(tmp_path):
    with pytest.raises(PermanentError, match="apt-get install busybox-static") as err:
        build_context(tmp_path / "busybox")
    assert err.value.category == "image_missing"


@pytest.mark.docker
def test_ensure_network_is_idempotent(docker_driver, docker_key):  # noqa: F811
    assert docker_driver.find_network(docker_key) is None
    first = docker_driver.ensure_network(docker_key, LABELS)
    second = docker_driver.ensure_network(docker_key, LABELS)
    assert first.ref == second.ref
    assert first.name == f"tpc-{docker_key}"
    assert first.labels[LABEL_MANAGED] == "true"
    assert first.labels[LABEL_TENANT] == "4242"
    assert docker_driver.find_network(docker_key).ref == first.ref
    assert docker_driver.remove_network(docker_key) is True
    assert docker_driver.remove_network(docker_key) is False
    assert docker_driver.find_network(docker_key) is None


@pytest.mark.docker
def test_more_tenant_networks_fit_than_the_engine_default_pools_allow(docker_driver):  # noqa: F811
    # The engine's default pools hold about 30 bridge networks; each tenant
    # network takes its own /27 from WORKLOAD_SUBNET_POOL instead.
    keys = [f"test{uuid.uuid4().hex[:8]}-n{i}" for i in range(40)]
    try:
        subnets = set()
        for key in keys:
            net = docker_driver.ensure_network(key, {})
            attrs = docker_driver.client.networks.get(net.ref).attrs
            subnets.add(attrs["IPAM"]["Config"][0]["Subnet"])
        assert len(subnets) == 40
        assert all(subnet.startswith("10.213.") for subnet in subnets)
    finally:
        for key in keys:
            docker_driver.remove_network(key)


def test_docker_replicas_serve_and_ensure_is_idempotent(docker_driver, docker_key):  # noqa: F811
    docker_driver.ensure_image(IMAGE)
    network = docker_driver.ensure_network(docker_key, LABELS)
    messages = []
    replicas = ensure(docker_driver, docker_key, 2, log=messages.append)

    assert [r.index for r in replicas] == [1, 2]
    assert [r.name for r in replicas] == [f"tpc-{docker_key}-r1", f"tpc-{docker_key}-r2"]
    assert all(r.host == "127.0.0.1" and r.port > 0 for r in replicas)
    assert len(messages) == 2 and messages[0].startswith(f"created container tpc-{docker_key}-r1")
    wait_ready(replicas)
    page = landing_page(replicas[1])
    assert "tenant acme-demo" in page and "replica 2" in page

    container = docker_driver.client.containers.get(replicas[0].ref)
    assert network.name in container.attrs["NetworkSettings"]["Networks"]
    assert container.labels[LABEL_TENANT] == "4242"
    assert container.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024

    again = ensure(docker_driver, docker_key, 2, log=messages.append)
    assert [r.ref for r in again] == [r.ref for r in replicas]
    assert messages[2].startswith("found running container")
    assert len(key_containers(docker_driver, docker_key)) == 2
    assert [r.ref for r in docker_driver.list_replicas(docker_key)] == [r.ref for r in replicas]

    managed = docker_driver.list_managed()
    assert {r.ref for r in replicas} <= {r.ref for r in managed["replicas"]}
    assert network.ref in {n.ref for n in managed["networks"]}

    assert docker_driver.remove_replicas(docker_key) == 2
    assert docker_driver.remove_replicas(docker_key) == 0
    assert docker_driver.remove_network(docker_key) is True
    assert key_containers(docker_driver, docker_key) == []
    managed = docker_driver.list_managed()
    assert not {r.ref for r in replicas} & {r.ref for r in managed["replicas"]}
    assert network.ref not in {n.ref for n in managed["networks"]}


@pytest.mark.docker
def test_stopped_container_is_started_again(docker_driver, docker_key):  # noqa: F811
    docker_driver.ensure_image(IMAGE)
    (replica,) = ensure(docker_driver, docker_key, 1)  # no network: the default bridge
    wait_ready([replica])
    docker_driver.client.containers.get(replica.ref).stop(timeout=1)
    (stopped,) = docker_driver.list_replicas(docker_key)
    assert stopped.state == "exited"

    messages = []
    (restarted,) = ensure(docker_driver, docker_key, 1, log=messages.append)
    assert restarted.ref == replica.ref
    assert restarted.state == "running"
    assert messages[0].startswith("started exited container")
    wait_ready([restarted])


@pytest.mark.docker
def test_concurrent_ensure_replicas_creates_exactly_n(docker_driver, docker_key):  # noqa: F811
    docker_driver.ensure_image(IMAGE)
    results, errors = [], []
    barrier = threading.Barrier(2)

    def worker():
        driver = DockerDriver()  # as two worker processes would: separate clients
        try:
            barrier.wait()
            results.append(ensure(driver, docker_key, 3))
        except Exception as exc:
            errors.append(exc)
        finally:
            driver.client.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(key_containers(docker_driver, docker_key)) == 3
    assert [r.ref for r in results[0]] == [r.ref for r in results[1]]
    wait_ready(results[0])


# Process driver


@pytest.fixture
def process_driver():
    return ProcessDriver()


@pytest.fixture
def process_key(process_driver):
    key = new_key()
    yield key
    process_driver.remove_replicas(key)
    process_driver.remove_network(key)


def state_files(var_dir: Path) -> list[str]:
    return sorted(p.name for p in (var_dir / "workloads").iterdir())


def test_process_network_is_a_record(process_driver, process_key, var_dir):
    assert process_driver.find_network(process_key) is None
    first = process_driver.ensure_network(process_key, LABELS)
    assert process_driver.ensure_network(process_key, LABELS).ref == first.ref
    assert first.labels[LABEL_MANAGED] == "true"
    assert process_driver.list_managed()["networks"] == [first]
    assert process_driver.remove_network(process_key) is True
    assert process_driver.remove_network(process_key) is False
    assert state_files(var_dir) == []


def test_process_replicas_serve_and_ensure_is_idempotent(process_driver, process_key, var_dir):
    process_driver.ensure_network(process_key, LABELS)
    messages = []
    replicas = ensure(process_driver, process_key, 2, log=messages.append)
    assert [r.index for r in replicas] == [1, 2]
    assert all(r.state == "running" and r.port > 0 for r in replicas)
    assert messages[0].startswith(f"started process tpc-{process_key}-r1")
    wait_ready(replicas)
    page = landing_page(replicas[0])
    assert "tenant acme-demo" in page and "replica 1" in page

    again = ensure(process_driver, process_key, 2, log=messages.append)
    assert [r.ref for r in again] == [r.ref for r in replicas]
    assert messages[2].startswith("found running process")
    assert process_driver.list_replicas(process_key) == again
    assert {r.ref for r in replicas} <= {r.ref for r in process_driver.list_managed()["replicas"]}

    pids = [int(r.ref) for r in replicas]
    assert process_driver.remove_replicas(process_key) == 2
    assert process_driver.remove_replicas(process_key) == 0
    assert process_driver.remove_network(process_key) is True
    assert not any(pid_is_replica(pid, r.name) for pid, r in zip(pids, replicas, strict=True))
    assert process_driver.list_replicas(process_key) == []
    assert process_driver.list_managed() == {"replicas": [], "networks": []}
    assert state_files(var_dir) == []


def test_killed_process_is_restarted(process_driver, process_key):
    (replica,) = ensure(process_driver, process_key, 1)
    wait_ready([replica])
    os.kill(int(replica.ref), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_driver.list_replicas(process_key)[0].state != "exited":
        assert time.monotonic() < deadline, "killed replica still reads as running"
        time.sleep(0.02)
    # Refused, or reset when the kernel has not closed its socket yet.
    assert probe(replica)[0] is False

    messages = []
    (restarted,) = ensure(process_driver, process_key, 1, log=messages.append)
    assert restarted.ref != replica.ref
    assert messages[0].startswith("restarted exited process")
    wait_ready([restarted])


def test_concurrent_process_ensure_creates_exactly_n(process_driver, process_key):
    results, errors = [], []
    barrier = threading.Barrier(2)

    def worker():
        try:
            barrier.wait()
            results.append(ensure(ProcessDriver(), process_key, 2))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r.ref for r in results[0]] == [r.ref for r in results[1]]
    assert len(process_driver.list_replicas(process_key)) == 2
    wait_ready(results[0])


# get_driver and the readiness probe


@pytest.fixture
def fresh_driver_cache():
    drivers.clear_cache()
    yield
    drivers.clear_cache()


def test_get_driver_by_name_and_setting(settings, fresh_driver_cache):
    assert isinstance(drivers.get_driver("process"), ProcessDriver)
    assert drivers.get_driver("process") is drivers.get_driver("process")
    settings.WORKLOAD_DRIVER = "process"
    assert drivers.get_driver() is drivers.get_driver("process")
    with pytest.raises(ValueError, match="unknown workload driver"):
        drivers.get_driver("kubernetes")


def test_auto_falls_back_to_processes_without_an_engine(
    settings, monkeypatch, tmp_path, fresh_driver_cache
):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    settings.WORKLOAD_DRIVER = "auto"
    assert isinstance(drivers.get_driver(), ProcessDriver)


@pytest.mark.docker
def test_auto_picks_docker_when_the_engine_answers(settings, fresh_driver_cache):
    from tests.docker_support import require_docker

    require_docker()
    settings.WORKLOAD_DRIVER = "auto"
    assert isinstance(drivers.get_driver(), DockerDriver)


def replica_at(port: int) -> Replica:
    return Replica(name="r", index=1, host="127.0.0.1", port=port, state="running", ref="x")


def test_probe_reports_why_a_replica_is_not_ready():
    class Unavailable(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert probe(replica_at(server.server_address[1])) == (False, "HTTP 503")
    finally:
        server.shutdown()
        server.server_close()
    # The server's port is closed now: nothing listens there.
    assert probe(replica_at(server.server_address[1])) == (False, "connection refused")
    assert probe(replica_at(0)) == (False, "no published port")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.docker
def test_a_replica_keeps_its_port_across_a_restart_and_a_taken_port_is_not_reused(
    docker_driver,  # noqa: F811 (the fixture imported above)
    docker_key,
    monkeypatch,
):
    from provisioning.drivers import docker_driver as module

    # The first port picked is taken by something else on the host: the
    # engine refuses it, and the replica comes up on the next pick.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        # Then ports that were free a moment ago (a neighbour of `taken` may not
        # be: other tests open sockets too).
        picks = iter([taken, *(_free_port() for _ in range(3))])
        monkeypatch.setattr(module, "pick_port", lambda: next(picks))
        (replica,) = ensure(docker_driver, docker_key, 1)
    assert replica.port != taken and replica.state == "running"
    assert len(key_containers(docker_driver, docker_key)) == 1  # the refused one is gone
    container = key_containers(docker_driver, docker_key)[0]
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    # A restart (as the engine does after its own) brings it back on the same port.
    container.restart(timeout=0)
    assert docker_driver.list_replicas(docker_key)[0].port == replica.port
