"""The interface every workload driver offers to the steps.

A driver owns a tenant's traffic boundary (network) and its replicas. Every
method is idempotent: it looks up what it would create by deterministic name
or label before creating it, and treats "already gone" as success when
removing. Names derive from ``key`` (for example ``t42-acme``), which the
caller builds from the tenant's id and slug, so two tenants never share one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

# Labels put on everything the platform creates; reconcile finds orphans by them.
LABEL_MANAGED = "io.tenant-console.managed"
LABEL_TENANT = "io.tenant-console.tenant"
LABEL_RUN = "io.tenant-console.run"
LABEL_REPLICA = "io.tenant-console.replica"
# The run's lease fence when its deploy made the workload (a swarm service's spec keeps it).
LABEL_FENCE = "io.tenant-console.fence"
LABEL_KEY = "io.tenant-console.key"  # the driver key (e.g. t42-acme), to list by label
NAME_PREFIX = "tpc-"


def network_name(key: str) -> str:
    return f"{NAME_PREFIX}{key}"


def service_name(key: str) -> str:
    """A swarm service (all of a tenant's replicas) shares its network's name."""
    return f"{NAME_PREFIX}{key}"


def replica_name(key: str, index: int) -> str:
    return f"{NAME_PREFIX}{key}-r{index}"


@dataclass
class Replica:
    name: str  # deterministic: tpc-<key>-r<index>
    index: int  # 1-based
    host: str  # where it answers HTTP, e.g. 127.0.0.1
    port: int
    state: str  # "running", "created", "exited", ...
    ref: str  # container id, process id, or a swarm task's id
    labels: dict = field(default_factory=dict)
    node: str = ""  # the swarm node that runs it ("" on one host)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Network:
    name: str
    ref: str
    labels: dict = field(default_factory=dict)


@dataclass
class Service:
    """A swarm service: all of a tenant's replicas (WORKLOAD_DRIVER=swarm)."""

    name: str
    ref: str
    labels: dict = field(default_factory=dict)


class WorkloadDriver(Protocol):
    name: str

    def ping(self) -> None:
        """Raise errors.EngineOutage when the engine does not answer."""

    def ensure_image(self, image: str) -> None:
        """Make sure the image exists, building the project's image if missing."""

    def ensure_network(self, key: str, labels: dict) -> Network: ...

    def find_network(self, key: str) -> Network | None: ...

    def remove_network(self, key: str) -> bool:
        """True when something was removed, False when it was already gone."""

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
        """Create replicas 1..count that do not exist yet; start stopped ones.

        A replica stands for a tenant's workload, which is not trusted: it
        sees ``env`` (plus its ``REPLICA`` number), none of the worker's
        secrets, and runs within ``memory_mb`` and ``pids_limit`` where the
        driver can enforce them.

        ``log(message)``, when given, is called for each thing created or
        found, so the step can record it for operators.
        """

    def list_replicas(self, key: str) -> list[Replica]: ...

    def remove_replicas(self, key: str) -> int:
        """Remove every replica of ``key``; return how many were removed."""

    def remove_replica(self, key: str, index: int) -> bool:
        """Remove replica ``index`` of ``key`` (to replace it); False when it was gone."""

    def list_managed(self) -> dict:
        """Everything labelled as the platform's: {"replicas": [...], "networks": [...]}
        (and "services": [...] on a swarm)."""
