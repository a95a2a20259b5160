"""How the swarm driver reads a service's tasks as replicas (no swarm needed: the
task lists are the engine's JSON as Swarm returns it, cut to the fields read),
and the follower's lock (one follower at a time, on the test database)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from provisioning.drivers.swarm_driver import _split_tag, registry_ref, replicas_of
from provisioning.traffic.follow import Follower

NODES = {"n1": ("swarm-n1", "10.0.0.1"), "n2": ("swarm-n2", "10.0.0.2")}


def service(replicas: int):
    spec = {
        "Mode": {"Replicated": {"Replicas": replicas}},
        "Labels": {"io.tenant-console.key": "k"},
    }
    return SimpleNamespace(attrs={"Spec": spec})


def task(slot, state, node="n1", *, desired="running", port=30001, created="2026-12-01T00:00:01Z"):
    status = {"State": state}
    if state == "running":
        status["PortStatus"] = {"Ports": [{"TargetPort": 8080, "PublishedPort": port}]}
    return {
        "ID": f"t{slot}-{state}-{created[-3:]}",
        "Slot": slot,
        "NodeID": node,
        "DesiredState": desired,
        "CreatedAt": created,
        "Status": status,
    }


def test_each_slot_is_its_running_task_at_its_nodes_address():
    tasks = [task(1, "running", "n1", port=30001), task(2, "running", "n2", port=30002)]
    replicas = replicas_of(service(2), tasks, NODES, "k")
    assert [(r.name, r.node, r.host, r.port, r.state) for r in replicas] == [
        ("tpc-k-r1", "swarm-n1", "10.0.0.1", 30001, "running"),
        ("tpc-k-r2", "swarm-n2", "10.0.0.2", 30002, "running"),
    ]
    assert replicas[0].labels["io.tenant-console.replica"] == "1"


def test_a_rescheduled_slot_is_its_new_task_and_has_no_port_until_it_runs():
    old = task(1, "running", "n2", desired="shutdown", created="2026-12-01T00:00:01Z")
    new = task(1, "preparing", "n1", created="2026-12-01T00:00:09Z")
    (replica,) = replicas_of(service(1), [old, new], NODES, "k")
    assert (replica.state, replica.node, replica.port) == ("preparing", "swarm-n1", 0)
    assert replica.ref == new["ID"]


def test_a_slot_without_a_task_yet_is_pending_and_slots_past_the_count_are_left_out():
    tasks = [task(1, "running"), task(3, "running")]  # slot 3: scaled down from 3 to 2
    replicas = replicas_of(service(2), tasks, NODES, "k")
    assert [(r.index, r.state, r.port) for r in replicas] == [
        (1, "running", 30001),
        (2, "pending", 0),
    ]


@pytest.mark.parametrize(
    ("image", "registry", "ref"),
    [
        ("tenant-console/workload:2", "10.0.0.1:5000", "10.0.0.1:5000/tenant-console/workload:2"),
        ("10.0.0.1:5000/x:1", "10.0.0.1:5000", "10.0.0.1:5000/x:1"),
        ("tenant-console/workload:2", "", "tenant-console/workload:2"),
    ],
)
def test_the_image_is_named_in_the_registry(settings, image, registry, ref):
    settings.WORKLOAD_REGISTRY = registry
    assert registry_ref(image) == ref


def test_tags_split_from_a_registry_with_a_port():
    assert _split_tag("10.0.0.1:5000/tenant-console/workload:2") == (
        "10.0.0.1:5000/tenant-console/workload",
        "2",
    )
    assert _split_tag("10.0.0.1:5000/workload") == ("10.0.0.1:5000/workload", "latest")


@pytest.mark.django_db(transaction=True)
def test_one_follower_follows_at_a_time_and_another_takes_over_when_it_goes():
    first, second = Follower(), Follower()
    try:
        assert first._holds_lock()
        assert not second._holds_lock()  # another worker (or host) follows meanwhile
        first.lock_conn.close()  # its worker died: the lock goes with its connection
        first.lock_conn = None
        assert second._holds_lock()
    finally:
        for follower in (first, second):
            if follower.lock_conn is not None:
                follower.lock_conn.close()
