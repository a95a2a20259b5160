"""Replicas run with least privilege: confined Docker containers, and process
replicas that never see the worker's secrets."""

from __future__ import annotations

import importlib
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.apps import apps as django_apps

from provisioning import actions
from provisioning.drivers import DEFAULT_WORKLOAD_IMAGE, get_driver
from provisioning.drivers.base import LABEL_KEY, Replica
from provisioning.drivers.process_driver import ProcessDriver
from provisioning.drivers.readiness import probe
from tenants.models import Plan
from tests.conftest import drive, new_tenant, wait_for
from tests.docker_support import require_docker

_image_migration = importlib.import_module(
    "tenants.migrations.0003_plan_pids_limit_workload_image_2"
)

WORKER_SECRETS = {
    "SECRET_KEY": "worker-secret-key-never-for-replicas",
    "DATABASE_URL": "postgres://console:hunter2@db.internal/console",
    "REDIS_URL": "redis://:hunter2@redis.internal:6379/0",
    "EMAIL_HOST_PASSWORD": "hunter2-smtp",
}


def landing_page(replica: Replica) -> str:
    with urllib.request.urlopen(replica.base_url + "/", timeout=5) as resp:
        return resp.read().decode()


@pytest.fixture
def docker_tenant(settings, plans):
    """A "pro" tenant provisioned on Docker, whose plan has limits of its own."""
    require_docker()
    settings.WORKLOAD_DRIVER = "docker"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    # Not the defaults, so the containers can only have them from the plan.
    Plan.objects.filter(name="pro").update(memory_mb=96, pids_limit=24)
    tenant = new_tenant("acme", plan="pro")
    try:
        # Through mark_active, which fetches the tenant's page via the proxy code.
        assert drive(tenant) == "succeeded"
        tenant.refresh_from_db()
        yield tenant
    finally:
        actions.decommission_tenant(tenant)
        assert drive(tenant) == "decommissioned"


def containers_of(tenant) -> list:
    client = get_driver().client
    return client.containers.list(filters={"label": f"{LABEL_KEY}={tenant.key}"})


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_a_docker_replica_is_confined_and_still_serves_the_tenant_page(docker_tenant):
    assert docker_tenant.state == "active"
    containers = containers_of(docker_tenant)
    assert len(containers) == 2
    for container in containers:
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
        assert config["User"] == "65534:65534"
        assert host["CapDrop"] == ["ALL"]
        assert not host["CapAdd"]
        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert host["ReadonlyRootfs"] is True
        assert host["Privileged"] is False
        assert host["PidsLimit"] == 24
        assert host["Memory"] == host["MemorySwap"] == 96 * 1024 * 1024
        assert set(host["Tmpfs"]) == {"/www"}

        # What the engine enforces, seen from inside: httpd runs as nobody,
        # with no capabilities, and cannot write outside /www.
        top = container.top(ps_args="-o pid,uid")  # numeric: the host names 65534 "nobody"
        uid = top["Titles"].index("UID")
        assert {row[uid] for row in top["Processes"]} == {"65534"}
        code, out = container.exec_run(["/bin/busybox", "grep", "CapEff", "/proc/1/status"])
        assert code == 0 and out.split()[-1] == b"0000000000000000"
        code, out = container.exec_run(["/bin/busybox", "touch", "/planted"])
        assert code != 0 and b"Read-only file system" in out

    for replica in get_driver().list_replicas(docker_tenant.key):
        page = landing_page(replica)
        assert "Welcome to tenant acme-demo" in page
        assert f"replica {replica.index} of" in page


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_a_fork_bomb_in_a_replica_stops_at_the_plans_pids_limit(docker_tenant):
    container = containers_of(docker_tenant)[0]
    (replica,) = [r for r in get_driver().list_replicas(docker_tenant.key) if r.ref == container.id]
    # Forks until the kernel refuses one (EAGAIN from the pids cgroup), then
    # exits; the exec returns once the sleeps it left have ended.
    bomb = "while :; do /bin/busybox sleep 1 & done"
    code, out = container.exec_run(["/bin/busybox", "sh", "-c", bomb])
    assert code != 0 and b"can't fork: Resource temporarily unavailable" in out
    # The bomb took the container down with it only while it lasted.
    wait_for(lambda: probe(replica)[0], timeout=10, message="the replica to serve again")
    assert "Welcome to tenant acme-demo" in landing_page(replica)


def test_a_process_replica_sees_none_of_the_workers_secrets(settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path
    for name, value in WORKER_SECRETS.items():
        monkeypatch.setenv(name, value)
    driver, key = ProcessDriver(), f"test{uuid.uuid4().hex[:8]}"
    env = {"TENANT_SLUG": "acme", "TENANT_ORG": "demo"}
    try:
        (replica,) = driver.ensure_replicas(
            key, image="", count=1, memory_mb=64, pids_limit=64, labels={}, env=env
        )
        environ = Path(f"/proc/{replica.ref}/environ").read_bytes()
        names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
        assert names == {"PATH", "PYTHONUNBUFFERED", "TENANT_SLUG", "TENANT_ORG", "REPLICA"}
        assert not any(value.encode() in environ for value in WORKER_SECRETS.values())
        wait_for(lambda: probe(replica)[0], timeout=10, message="the replica to serve")
        assert "Welcome to tenant acme-demo" in landing_page(replica)
    finally:
        driver.remove_replicas(key)


@pytest.mark.django_db
def test_plans_on_the_old_image_move_to_the_new_tag_and_others_stay(plans):
    legacy = Plan.objects.create(
        name="legacy", display_name="Legacy", image=_image_migration.OLD_IMAGE, replicas=1
    )
    own = Plan.objects.create(name="own", display_name="Own", image="example/own:1", replicas=1)
    move = _image_migration.move_image(_image_migration.OLD_IMAGE, _image_migration.NEW_IMAGE)
    move(django_apps, None)
    legacy.refresh_from_db()
    own.refresh_from_db()
    assert legacy.image == _image_migration.NEW_IMAGE
    assert own.image == "example/own:1"
    # The tag plans move to is the one the project builds by default.
    assert DEFAULT_WORKLOAD_IMAGE == _image_migration.NEW_IMAGE
