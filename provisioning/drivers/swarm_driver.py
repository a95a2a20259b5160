"""Workloads on a Docker Swarm: one replicated service per tenant, through the docker SDK.

``DOCKER_HOST`` names a manager. A tenant's replicas are the tasks of one
service, ``tpc-<key>``, on an attachable overlay network of the same name:

- the service runs the plan's replica count, with the platform's labels
  (tenant, run, the run's lease fence), ``init`` (busybox httpd as PID 1
  ignores SIGTERM: without an init a removal waits out the grace period),
  the plan's memory and pids limits and the same confinement as a container
  of the Docker driver (non-root, no capabilities, read-only root);
- each task publishes its port in host mode on the node that runs it (the
  ingress routing mesh needs IPVS, which not every kernel has, and adds a
  hop); a replica's address is its node's address and its task's port, read
  from the task's status, so it changes whenever Swarm reschedules the task;
- the network uses ``endpoint_mode=dnsrr`` (no virtual IP, no IPVS either);
- the nodes pull the image from ``WORKLOAD_REGISTRY``: the project builds its
  workload image on the manager, as the Docker driver does, and pushes it
  there when the registry lacks it.

A replica is a task slot: ``tpc-<key>-r<slot>`` is the running task of that
slot (or its newest one). Swarm restarts and reschedules tasks by itself, so
this driver never replaces a single replica: repair (``provisioning.repair``)
only reports for swarm tenants and recreates what Swarm cannot, such as a
deleted service.

A service's spec is changed only by sending back the stored spec with the
one field changed: docker SDK 7's ``Service.update()``/``scale()`` re-send
the spec with defaults filled in, which Swarm reads as a new spec and
restarts every task.
"""

from __future__ import annotations

import contextlib
import threading
import time

import docker
import docker.errors
import docker.types

from provisioning.errors import PermanentError, TransientError

from . import file_lock, key_lock, workload_image
from .base import (
    LABEL_KEY,
    LABEL_MANAGED,
    LABEL_REPLICA,
    Network,
    Replica,
    Service,
    network_name,
    replica_name,
    service_name,
)
from .docker_driver import (
    CONTAINER_PORT,
    WEB_ROOT,
    WORKLOAD_USER,
    DockerDriver,
    _docker_errors,
    _network,
)

TARGET_PORT = int(CONTAINER_PORT.split("/")[0])
# The web root is a tmpfs, as with the Docker driver; Swarm's tmpfs options
# carry a size and a mode but no owner, hence sticky and world-writable.
WEB_ROOT_BYTES = 1 << 20
WEB_ROOT_MODE = 0o1777
# Removing a network waits for the service's containers to stop (with init,
# about 1-2 s); past this the undo is retried as a transient failure.
NETWORK_REMOVE_SECONDS = 30.0
# Task states a replica passes through before it runs (docker's swarm API).
STARTING = ("new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting")

# A tag's digest, once read from the registry, is trusted this long: a tag
# pushed anew (a rebuilt image) reaches new services within a minute.
DIGEST_SECONDS = 60.0

_push_lock = threading.Lock()


def registry() -> str:
    from django.conf import settings

    return getattr(settings, "WORKLOAD_REGISTRY", "")


def constraints() -> list[str]:
    """WORKLOAD_SWARM_CONSTRAINTS: where tenants' tasks may run (node labels, roles)."""
    from django.conf import settings

    return list(getattr(settings, "WORKLOAD_SWARM_CONSTRAINTS", []))


def registry_ref(image: str) -> str:
    """The image's name in WORKLOAD_REGISTRY (the image itself without one)."""
    where = registry()
    if not where or image.startswith(where + "/"):
        return image
    return f"{where}/{image}"


def _split_tag(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    if not repository or "/" in tag:  # "host:5000/name" has no tag
        return ref, "latest"
    return repository, tag


class SwarmDriver(DockerDriver):
    name = "swarm"

    def __init__(self, client: docker.DockerClient | None = None):
        super().__init__(client)
        self._digests: dict[str, tuple[float, str]] = {}  # ref -> (when seen, digest)

    # Image: built on the manager as by the Docker driver, then pushed.

    def ensure_image(self, image: str) -> None:
        ref = registry_ref(image)
        if ref == image:  # no registry: the nodes must have it already
            super().ensure_image(image)
            return
        if self.registry_has(ref):
            return
        with _push_lock, file_lock("swarm-image-push"):
            if self.registry_has(ref):  # another worker pushed it while we waited
                return
            if image == workload_image():
                super().ensure_image(image)  # builds it on the manager when missing
            elif not self.image_exists(image):
                raise PermanentError(
                    f"image {image} is neither in the registry {registry()} nor on the "
                    "manager; push it to the registry",
                    category="image_missing",
                )
            self.push(image, ref)

    def registry_has(self, ref: str) -> bool:
        return self.registry_digest(ref) is not None

    def registry_digest(self, ref: str) -> str | None:
        """The digest of ``ref`` in the registry (None when it lacks it), asked through
        the manager, which may reach a registry the console cannot. A digest found
        is kept for DIGEST_SECONDS: one registry round trip per deploy, not three."""
        known = self._digests.get(ref)
        if known and time.monotonic() - known[0] < DIGEST_SECONDS:
            return known[1]
        digest = self._ask_digest(ref)
        if digest:
            self._digests[ref] = (time.monotonic(), digest)
        return digest

    def _ask_digest(self, ref: str) -> str | None:
        with _docker_errors():
            try:
                found = self.client.api.inspect_distribution(ref)
            except docker.errors.NotFound:
                return None
            except docker.errors.APIError as exc:
                text = str(exc).lower()
                if "manifest unknown" in text or "not found" in text:
                    return None
                raise
        return (found.get("Descriptor") or {}).get("digest") or None

    def pinned(self, image: str) -> str:
        """The image as a service names it: ``registry/name:tag@digest``.

        Pinned, every task of a service runs the same image, and a node that
        has it already starts the task without asking the registry first
        (about 1 s less per task here, as ``docker service create`` does too).
        """
        ref = registry_ref(image)
        if ref == image:
            return image
        digest = self.registry_digest(ref)
        return f"{ref}@{digest}" if digest else ref

    def push(self, image: str, ref: str) -> None:
        repository, tag = _split_tag(ref)
        with _docker_errors():
            self.client.images.get(image).tag(repository, tag)
            for line in self.client.images.push(repository, tag=tag, stream=True, decode=True):
                if line.get("error"):
                    raise TransientError(
                        f"pushing {ref} failed: {line['error']}", category="docker_unreachable"
                    )

    # Network: an attachable overlay network per tenant.

    def ensure_network(self, key: str, labels: dict) -> Network:
        name = network_name(key)
        existing = self._networks_named(name)
        if existing:
            return _network(existing[0])
        with key_lock("swarm-network", key):
            existing = self._networks_named(name)
            if existing:
                return _network(existing[0])
            all_labels = {**labels, LABEL_MANAGED: "true", LABEL_KEY: key}
            with _docker_errors():
                try:
                    return _network(
                        self.client.networks.create(
                            name,
                            driver="overlay",
                            attachable=True,
                            scope="swarm",
                            labels=all_labels,
                            check_duplicate=True,
                        )
                    )
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise
            # Another worker (maybe on another host) made it first: the manager
            # refuses a second swarm network of one name.
            existing = self._networks_named(name)
            if not existing:
                raise TransientError(f"network {name} is taken but was not found")
            return _network(existing[0])

    def remove_network(self, key: str) -> bool:
        """Remove the overlay network, waiting while the service's containers stop."""
        removed = False
        deadline = time.monotonic() + NETWORK_REMOVE_SECONDS
        for net in self._networks_named(network_name(key)):
            while True:
                with _docker_errors():
                    try:
                        net.remove()
                    except docker.errors.NotFound:
                        break
                    except docker.errors.APIError as exc:
                        busy = "active endpoints" in str(exc) or "in use" in str(exc)
                        if not busy:
                            raise
                        if time.monotonic() > deadline:
                            raise TransientError(
                                f"network {net.name} still has containers attached after "
                                f"{NETWORK_REMOVE_SECONDS:g}s",
                                category="docker_unreachable",
                            ) from exc
                        time.sleep(0.2)
                        continue
                removed = True
                break
        # A node's own copy of the network stays listed until the service's
        # containers there have stopped (a few seconds): "removed" means gone.
        while self._networks_named(network_name(key)):
            if time.monotonic() > deadline:
                raise TransientError(
                    f"network {network_name(key)} is still listed {NETWORK_REMOVE_SECONDS:g}s "
                    "after its removal",
                    category="docker_unreachable",
                )
            time.sleep(0.2)
        return removed

    # Replicas: the tasks of one service.

    def find_service(self, key: str):
        name = service_name(key)
        with _docker_errors():
            found = [s for s in self.client.services.list(filters={"name": name}) if s.name == name]
        return found[0] if found else None

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
        service = self.find_service(key)
        if service is None:
            with key_lock("swarm-service", key):
                service = self.find_service(key)
                if service is None:
                    service, created = self._create_service(
                        key, image, count, memory_mb, pids_limit, labels, env
                    )
                    if log:
                        verb = "created" if created else "found"
                        log(f"{verb} service {service.name} ({service.short_id}), {count} task(s)")
        else:
            replicas = self.desired(service)
            if replicas != count:
                self.scale(service, count)
                if log:
                    log(f"scaled service {service.name} from {replicas} to {count} task(s)")
            elif log:
                log(f"found service {service.name} ({service.short_id}), {count} task(s)")
        return self.list_replicas(key)

    def _create_service(self, key, image, count, memory_mb, pids_limit, labels, env):
        all_labels = {**labels, LABEL_MANAGED: "true", LABEL_KEY: key}
        network = self.ensure_network(key, {k: v for k, v in labels.items() if k != LABEL_KEY})
        environment = [f"{k}={v}" for k, v in env.items()]
        environment.append("REPLICA={{.Task.Slot}}")  # a Swarm template: the task's slot
        container = docker.types.ContainerSpec(
            image=self.pinned(image),
            env=environment,
            labels=all_labels,
            user=WORKLOAD_USER,
            read_only=True,
            init=True,
            cap_drop=["ALL"],
            mounts=[
                docker.types.Mount(
                    WEB_ROOT,
                    None,
                    type="tmpfs",
                    tmpfs_size=WEB_ROOT_BYTES,
                    tmpfs_mode=WEB_ROOT_MODE,
                )
            ],
        )
        limits = {"Pids": pids_limit}
        if memory_mb:
            limits["MemoryBytes"] = memory_mb * 1024 * 1024
        template = docker.types.TaskTemplate(
            container,
            resources={"Limits": limits},
            restart_policy=docker.types.RestartPolicy(condition="any", delay=0),
            networks=[network.ref],
            placement=docker.types.Placement(constraints=constraints() or None),
        )
        endpoint = {
            "Mode": "dnsrr",
            "Ports": [{"Protocol": "tcp", "TargetPort": TARGET_PORT, "PublishMode": "host"}],
        }
        with _docker_errors():
            try:
                created = self.client.api.create_service(
                    template,
                    name=service_name(key),
                    labels=all_labels,
                    mode=docker.types.ServiceMode("replicated", replicas=count),
                    endpoint_spec=endpoint,
                )
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                created = None  # made by another worker meanwhile
            service = self.find_service(key)
        if service is None:
            raise TransientError(f"service {service_name(key)} was created but not found")
        return service, created is not None

    @staticmethod
    def desired(service) -> int:
        mode = service.attrs["Spec"].get("Mode") or {}
        return int((mode.get("Replicated") or {}).get("Replicas") or 0)

    def scale(self, service, count: int) -> None:
        """Change the replica count only: the stored spec goes back with that one field."""
        with _docker_errors():
            service.reload()
            spec = service.attrs["Spec"]
            self.client.api.update_service(
                service.id,
                service.version,
                task_template=spec["TaskTemplate"],
                name=spec["Name"],
                labels=spec.get("Labels"),
                mode={"Replicated": {"Replicas": count}},
                update_config=spec.get("UpdateConfig"),
                rollback_config=spec.get("RollbackConfig"),
                endpoint_spec=spec.get("EndpointSpec"),
            )

    def nodes(self) -> dict[str, tuple[str, str]]:
        """{node id: (hostname, address)} of every node."""
        with _docker_errors():
            listed = self.client.api.nodes()
        found = {}
        for node in listed:
            address = (node.get("Status") or {}).get("Addr") or ""
            if address in ("", "0.0.0.0", "127.0.0.1"):
                # A manager may report no address of its own: use the one it advertises.
                manager = (node.get("ManagerStatus") or {}).get("Addr") or ""
                address = manager.rpartition(":")[0] or address
            hostname = (node.get("Description") or {}).get("Hostname") or node["ID"][:12]
            found[node["ID"]] = (hostname, address)
        return found

    def list_replicas(self, key: str) -> list[Replica]:
        service = self.find_service(key)
        if service is None:
            return []
        with _docker_errors():
            tasks = self.client.api.tasks(filters={"service": service.id})
        return replicas_of(service, tasks, self.nodes(), key)

    def remove_replicas(self, key: str) -> int:
        service = self.find_service(key)
        if service is None:
            return 0
        count = self.desired(service)
        with _docker_errors(), contextlib.suppress(docker.errors.NotFound):
            service.remove()
        return count

    def remove_replica(self, key: str, index: int) -> bool:
        raise PermanentError(
            "Swarm restarts and reschedules a service's tasks itself; one replica is "
            "not removed on its own (scale the service or remove it)",
            category="unknown",
        )

    def replicas_by_key(self) -> dict[str, list[Replica]]:
        """Every managed service's replicas by key: three API calls, however many tenants."""
        label = f"{LABEL_MANAGED}=true"
        with _docker_errors():
            services = self.client.services.list(filters={"label": label})
            tasks = self.client.api.tasks(filters={"desired-state": "running"}) if services else []
        nodes = self.nodes() if services else {}
        by_service: dict[str, list[dict]] = {}
        for task in tasks:
            by_service.setdefault(task.get("ServiceID", ""), []).append(task)
        found = {}
        for service in services:
            key = (service.attrs["Spec"].get("Labels") or {}).get(LABEL_KEY, "")
            if key:
                found[key] = replicas_of(service, by_service.get(service.id, []), nodes, key)
        return found

    def list_managed(self) -> dict:
        label = f"{LABEL_MANAGED}=true"
        with _docker_errors():
            services = self.client.services.list(filters={"label": label})
            networks = self.client.networks.list(filters={"label": label})
        replicas = []
        if services:
            nodes = self.nodes()
            for service in services:
                key = (service.attrs["Spec"].get("Labels") or {}).get(LABEL_KEY, "")
                with _docker_errors():
                    tasks = self.client.api.tasks(filters={"service": service.id})
                replicas += replicas_of(service, tasks, nodes, key)
        return {
            "replicas": sorted(replicas, key=lambda r: r.name),
            "networks": sorted((_network(n) for n in networks), key=lambda n: n.name),
            "services": sorted((_service(s) for s in services), key=lambda s: s.name),
        }


def _service(service) -> Service:
    return Service(service.name, service.id, dict(service.attrs["Spec"].get("Labels") or {}))


def replicas_of(service, tasks: list[dict], nodes: dict, key: str) -> list[Replica]:
    """One Replica per slot 1..N of the service: its running task, else its newest one,
    else a "pending" placeholder (the orchestrator has not made the task yet)."""
    count = SwarmDriver.desired(service)
    labels = dict(service.attrs["Spec"].get("Labels") or {})
    by_slot: dict[int, tuple] = {}
    for task in tasks:
        slot = task.get("Slot") or 0
        if not 1 <= slot <= count:
            continue
        rank = (
            task.get("DesiredState") == "running",
            (task.get("Status") or {}).get("State") == "running",
            task.get("CreatedAt", ""),
        )
        if slot not in by_slot or rank > by_slot[slot][0]:
            by_slot[slot] = (rank, task)
    replicas = []
    for slot in range(1, count + 1):
        name = replica_name(key, slot)
        if slot not in by_slot:
            replicas.append(
                Replica(name, slot, "", 0, "pending", "", {**labels, LABEL_REPLICA: str(slot)})
            )
            continue
        task = by_slot[slot][1]
        status = task.get("Status") or {}
        state = status.get("State") or "unknown"
        hostname, address = nodes.get(task.get("NodeID") or "", ("", ""))
        port = 0
        for published in (status.get("PortStatus") or {}).get("Ports") or []:
            if published.get("TargetPort") == TARGET_PORT and published.get("PublishedPort"):
                port = int(published["PublishedPort"])
                break
        replicas.append(
            Replica(
                name=name,
                index=slot,
                host=address,
                port=port if state == "running" else 0,
                state=state,
                ref=task["ID"],
                labels={**labels, LABEL_REPLICA: str(slot)},
                node=hostname,
            )
        )
    return replicas
