"""Workloads as Docker containers, through the docker SDK.

Names are deterministic (``tpc-<key>`` for the network, ``tpc-<key>-r<i>``
for replicas), so every method looks up by name before creating, and the
engine's unique container names settle races between workers.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import random
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import docker.errors
import docker.types
import requests.exceptions

from provisioning.errors import PermanentError, StepError, TransientError, classify

from . import file_lock, key_lock, workload_image
from .base import (
    LABEL_KEY,
    LABEL_MANAGED,
    LABEL_REPLICA,
    Network,
    Replica,
    network_name,
    replica_name,
)
from .workload_server import render_page

BUSYBOX = Path("/bin/busybox")
CONTAINER_PORT = "8080/tcp"
CLIENT_TIMEOUT = 30  # seconds per API call
MAX_PARALLEL = 4  # replicas created at once by one ensure_replicas call
CONFLICT_LOOKUP_TIMEOUT = 5.0  # seconds to wait for a name another worker is creating
RESTART_POLICY = "unless-stopped"
# Each replica publishes on a host port picked at random from this range and
# kept across restarts. A port the engine picks itself is handed out again
# when the engine restarts, often to another container: a route naming it
# would then send one tenant's traffic to another tenant's replica until it
# is updated. The range lies below Linux's ephemeral ports (32768-60999),
# which the engine's own picks and outgoing connections use; a port that is
# taken anyway is refused by the engine, and another one is tried.
PORT_RANGE = (20000, 32768)
PORT_TRIES = 8

# A tenant's workload is not trusted, so its replicas run with least privilege:
# "nobody" (numeric, since a scratch image has no /etc/passwd), no capabilities,
# no setuid gains, a read-only root filesystem, and the plan's memory and pids
# limits. The only writable place is WEB_ROOT, a small tmpfs that the non-root
# user owns (about 1 KB is written there).
WORKLOAD_UID = WORKLOAD_GID = 65534
WORKLOAD_USER = f"{WORKLOAD_UID}:{WORKLOAD_GID}"
WEB_ROOT = "/www"
WEB_ROOT_TMPFS = f"size=1m,uid={WORKLOAD_UID},gid={WORKLOAD_GID},mode=0700,noexec,nosuid,nodev"

# Written into the image. A scratch image's only program is busybox, hence the
# explicit "/bin/busybox <applet>" everywhere. The page comes from the same
# template as the process driver's server; the here-document (a pipe in
# busybox sh, so it needs no writable /tmp) expands the ${...} placeholders
# from the container's env.
ENTRYPOINT_SH = """\
/bin/busybox cat > {root}/index.html <<EOF
{page}EOF
/bin/busybox printf ok > {root}/healthz
exec /bin/busybox httpd -f -p 8080 -h {root}
""".format(
    root=WEB_ROOT,
    page=render_page("${TENANT_SLUG:-unknown}", "${TENANT_ORG:-unknown}", "${REPLICA:-1}"),
)

# STOPSIGNAL SIGKILL: httpd runs as PID 1 and ignores SIGTERM, so a plain
# `docker stop` would otherwise wait its full 10 s grace period for nothing.
# USER here too, so that even a container started by hand from the image is
# not root; the driver sets it again for plans that name an image of their own.
DOCKERFILE = f"""\
FROM scratch
COPY busybox /bin/busybox
COPY entrypoint.sh /entrypoint.sh
USER {WORKLOAD_USER}
EXPOSE 8080
STOPSIGNAL SIGKILL
ENTRYPOINT ["/bin/busybox", "sh", "/entrypoint.sh"]
"""

# flock() already excludes threads that open the lock file separately; this
# lock just keeps the threads of one worker from queueing on the file.
_build_lock = threading.Lock()


@contextlib.contextmanager
def _docker_errors():
    """Turn SDK and transport errors into StepErrors the engine knows how to treat."""
    try:
        yield
    except StepError:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise classify(exc) from exc


def build_context(busybox: Path = BUSYBOX) -> io.BytesIO:
    """The image's build context as an in-memory tar: Dockerfile, busybox, entrypoint."""
    if not busybox.is_file():
        raise PermanentError(
            f"{busybox} is missing, so the workload image cannot be built: "
            "apt-get install busybox-static",
            category="image_missing",
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in (
            ("Dockerfile", DOCKERFILE.encode(), 0o644),
            ("entrypoint.sh", ENTRYPOINT_SH.encode(), 0o755),
            ("busybox", busybox.read_bytes(), 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


class DockerDriver:
    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None):
        self._client = client
        self._client_lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        # Created on first use so that constructing a driver never touches the engine.
        if self._client is None:
            with self._client_lock, _docker_errors():
                if self._client is None:
                    self._client = docker.from_env(timeout=CLIENT_TIMEOUT)
        return self._client

    def ping(self) -> None:
        with _docker_errors():
            self.client.ping()

    # Image

    def image_exists(self, image: str) -> bool:
        with _docker_errors():
            try:
                self.client.images.get(image)
            except docker.errors.ImageNotFound:
                return False
            return True

    def ensure_image(self, image: str) -> None:
        if self.image_exists(image):
            return
        if image != workload_image():
            raise PermanentError(
                f"image {image} is not on the engine and no registry is reachable; "
                "build or load it on the engine",
                category="image_missing",
            )
        with _build_lock, file_lock("docker-image-build"):
            if self.image_exists(image):  # another worker built it while we waited
                return
            self.build_image(image)

    def build_image(self, image: str) -> None:
        """Build the project's workload image under ``image``. Building twice is harmless."""
        context = build_context()
        with _docker_errors():
            try:
                self.client.images.build(
                    fileobj=context, custom_context=True, tag=image, rm=True, forcerm=True
                )
            except docker.errors.BuildError as exc:
                raise PermanentError(
                    f"building {image} failed: {exc}", category="image_missing"
                ) from exc

    # Network

    def _networks_named(self, name: str) -> list:
        # The engine's name filter matches substrings; keep exact matches only.
        with _docker_errors():
            found = [n for n in self.client.networks.list(names=[name]) if n.name == name]
        return sorted(found, key=lambda n: n.attrs.get("Created", ""))

    def find_network(self, key: str) -> Network | None:
        found = self._networks_named(network_name(key))
        return _network(found[0]) if found else None

    def ensure_network(self, key: str, labels: dict) -> Network:
        name = network_name(key)
        existing = self._networks_named(name)
        if existing:
            return _network(existing[0])
        # Engine API 1.41 (Docker 20.10) checks duplicate network names only
        # best effort, so two workers creating at once could make two networks
        # with one name: serialise creation per key on this host.
        with key_lock("docker-network", key):
            existing = self._networks_named(name)
            if existing:
                return _network(existing[0])
            all_labels = {**labels, LABEL_MANAGED: "true", LABEL_KEY: key}
            return _network(self._create_with_own_subnet(name, all_labels))

    def _create_with_own_subnet(self, name: str, labels: dict):
        """Create a bridge network on a small subnet of WORKLOAD_SUBNET_POOL.

        The engine's default pools hold only about 30 bridge networks, which
        would cap a host at 30 tenants (seen here: the 24th network failed
        with "could not find an available, non-overlapping IPv4 address
        pool"). A /27 per tenant from a /16 gives 2,048. Picking and creating
        happen under a host-wide lock; a clash with another host's pick is
        retried with the next free subnet.
        """
        tried: set[ipaddress.IPv4Network] = set()
        with file_lock("docker-subnets"):
            for _ in range(5):
                subnet = self._free_subnet(exclude=tried)
                tried.add(subnet)
                ipam = docker.types.IPAMConfig(
                    pool_configs=[docker.types.IPAMPool(subnet=str(subnet))]
                )
                try:
                    with _docker_errors():
                        return self.client.networks.create(
                            name, driver="bridge", labels=labels, ipam=ipam, check_duplicate=True
                        )
                except StepError as exc:
                    if "overlap" not in str(exc):
                        raise
        raise TransientError(f"could not find a free subnet for {name} after 5 tries")

    def _free_subnet(self, exclude) -> ipaddress.IPv4Network:
        from django.conf import settings

        pool = ipaddress.ip_network(settings.WORKLOAD_SUBNET_POOL)
        prefix = settings.WORKLOAD_SUBNET_PREFIX
        used = set(exclude)
        with _docker_errors():
            networks = self.client.networks.list()
        for net in networks:
            for config in (net.attrs.get("IPAM") or {}).get("Config") or []:
                with contextlib.suppress(KeyError, ValueError):
                    used.add(ipaddress.ip_network(config["Subnet"], strict=False))
        for candidate in pool.subnets(new_prefix=prefix):
            if not any(candidate.overlaps(other) for other in used):
                return candidate
        raise PermanentError(
            f"every /{prefix} of WORKLOAD_SUBNET_POOL={pool} is in use; "
            "decommission tenants or configure a larger pool",
            category="docker_unreachable",
        )

    def remove_network(self, key: str) -> bool:
        removed = False
        for net in self._networks_named(network_name(key)):
            with _docker_errors():
                try:
                    net.remove()
                except docker.errors.NotFound:
                    continue
                except docker.errors.APIError as exc:
                    if "active endpoints" not in str(exc):
                        raise
                    # Something is still attached (replicas not removed first,
                    # or a stray container): detach it, then remove.
                    _disconnect_all(net)
                    try:
                        net.remove()
                    except docker.errors.NotFound:
                        continue
            removed = True
        return removed

    # Replicas

    def _get_container(self, name: str):
        with _docker_errors():
            try:
                return self.client.containers.get(name)
            except docker.errors.NotFound:
                return None

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
        found = self.find_network(key)
        network = found.name if found else None
        confined = confinement(memory_mb, pids_limit)
        if count > 1:
            # Creating and starting a container takes about 0.4 s of engine
            # time that overlaps: measured, 5 replicas take about 1.1 s in
            # parallel against 2 s one after another.
            with ThreadPoolExecutor(max_workers=min(count, MAX_PARALLEL)) as pool:
                futures = [
                    pool.submit(self._ensure_replica, key, i, image, confined, labels, env, network)
                    for i in range(1, count + 1)
                ]
                results = [f.result() for f in futures]
        else:
            results = [self._ensure_replica(key, 1, image, confined, labels, env, network)]
        # log() runs here, in the caller's thread, because it may well write to
        # the database, and Django connections belong to the thread.
        for _, message in results:
            if log:
                log(message)
        return [replica for replica, _ in results]

    def _ensure_replica(self, key, index, image, confined, labels, env, network):
        """(replica, log message) for replica ``index``, created or started as needed."""
        name = replica_name(key, index)
        taken: StepError | None = None
        for _ in range(PORT_TRIES):
            container = self._get_container(name)
            created = False
            if container is None:
                spec = {
                    "image": image,
                    "name": name,
                    "labels": {
                        **labels,
                        LABEL_MANAGED: "true",
                        LABEL_KEY: key,
                        LABEL_REPLICA: str(index),
                    },
                    "environment": {
                        **{k: str(v) for k, v in env.items()},
                        "REPLICA": str(index),
                    },
                    **confined,
                    "network": network,
                    # A host port of its own, kept across restarts (see pick_port).
                    "ports": {CONTAINER_PORT: (publish_host(), pick_port())},
                    # The engine starts it again after a crash or its own restart;
                    # only a deliberate `docker stop` keeps it down (repair restarts
                    # that one: provisioning.repair).
                    "restart_policy": {"Name": RESTART_POLICY},
                    "detach": True,
                }
                container, created = self._create(spec)
            status = container.status
            try:
                with _docker_errors():
                    if status == "paused":
                        container.unpause()
                    elif status != "running":
                        # Starting a container that a racing worker just started is a
                        # 304 from the engine, which the SDK does not treat as an error.
                        container.start()
                    container.reload()  # the published port is known only once it runs
            except StepError as exc:
                if exc.category != "port_in_use":
                    raise
                # Its port is taken (picked by chance, or by something that
                # started while the engine was down): a new container on
                # another port; the caller points the route at it.
                taken = exc
                self._remove(container)
                continue
            break
        else:
            raise taken
        replica = _replica(container)
        if created:
            action = "created"
        elif status == "running":
            action = "found running"
        else:
            action = f"started {status}"  # e.g. "started exited container ..."
        return (
            replica,
            f"{action} container {name} ({container.short_id}) on {replica.host}:{replica.port}",
        )

    def _remove(self, container) -> None:
        with _docker_errors(), contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)

    def _create(self, spec: dict):
        """Create (not start) a container; (container, whether we created it)."""
        # containers.create, not containers.run: run() would try to pull a
        # missing image from a registry, which is unreachable here.
        with _docker_errors():
            try:
                return self.client.containers.create(**spec), True
            except docker.errors.ImageNotFound:
                self.ensure_image(spec["image"])
                return self.client.containers.create(**spec), True
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
        # 409 Conflict: another worker is creating this name right now. The
        # engine reserves the name before the container can be looked up, so
        # a lookup straight away may still answer 404: poll briefly.
        deadline = time.monotonic() + CONFLICT_LOOKUP_TIMEOUT
        while True:
            container = self._get_container(spec["name"])
            if container is not None:
                return container, False
            if time.monotonic() > deadline:
                raise TransientError(
                    f"container {spec['name']} is taken by another worker but never appeared"
                )
            time.sleep(0.05)

    def _list(self, label: str) -> list:
        with _docker_errors():
            return self.client.containers.list(
                all=True, filters={"label": label}, ignore_removed=True
            )

    def list_replicas(self, key: str) -> list[Replica]:
        return sorted(
            (_replica(c) for c in self._list(f"{LABEL_KEY}={key}")), key=lambda r: r.index
        )

    def remove_replicas(self, key: str) -> int:
        removed = 0
        for container in self._list(f"{LABEL_KEY}={key}"):
            with _docker_errors():
                try:
                    container.remove(force=True)
                except docker.errors.NotFound:
                    continue
                except docker.errors.APIError as exc:
                    # Another worker is removing it right now: gone either way.
                    if exc.status_code == 409 and "already in progress" in str(exc):
                        continue
                    raise
            removed += 1
        return removed

    def remove_replica(self, key: str, index: int) -> bool:
        container = self._get_container(replica_name(key, index))
        if container is None:
            return False
        with _docker_errors():
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                return False
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "already in progress" in str(exc):
                    return True
                raise
        return True

    def list_managed(self) -> dict:
        label = f"{LABEL_MANAGED}=true"
        replicas = sorted((_replica(c) for c in self._list(label)), key=lambda r: r.name)
        with _docker_errors():
            networks = self.client.networks.list(filters={"label": label})
        return {
            "replicas": replicas,
            "networks": sorted((_network(n) for n in networks), key=lambda n: n.name),
        }


def pick_port() -> int:
    return random.randrange(*PORT_RANGE)


def publish_host() -> str:
    """The host address replicas publish on (WORKLOAD_PUBLISH_HOST, default 127.0.0.1)."""
    from django.conf import settings

    return settings.WORKLOAD_PUBLISH_HOST


def confinement(memory_mb: int, pids_limit: int) -> dict:
    """The containers.create() arguments that confine a replica (see WORKLOAD_USER)."""
    memory = f"{memory_mb}m" if memory_mb else None
    return {
        "user": WORKLOAD_USER,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "tmpfs": {WEB_ROOT: WEB_ROOT_TMPFS},
        "pids_limit": pids_limit,
        # Swap limited to the same figure: the plan's memory is all a replica
        # gets, not as much again in swap.
        "mem_limit": memory,
        "memswap_limit": memory,
    }


def _disconnect_all(net) -> None:
    net.reload()
    for container_id in net.attrs.get("Containers") or {}:
        with contextlib.suppress(docker.errors.NotFound):
            net.disconnect(container_id, force=True)


def _network(net) -> Network:
    return Network(name=net.name, ref=net.id, labels=dict(net.attrs.get("Labels") or {}))


def _replica(container) -> Replica:
    labels = dict(container.labels or {})
    ports = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    bindings = ports.get(CONTAINER_PORT) or [{}]
    host = bindings[0].get("HostIp") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    index = labels.get(LABEL_REPLICA) or container.name.rsplit("-r", 1)[-1]
    return Replica(
        name=container.name,
        index=int(index) if str(index).isdigit() else 0,
        host=host,
        port=int(bindings[0].get("HostPort") or 0),
        state=container.status,
        ref=container.id,
        labels=labels,
    )
