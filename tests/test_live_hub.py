"""The per-process live hub: LISTEN/NOTIFY fan-out, coalescing, reconnect, resync."""

import asyncio
import contextlib

import pytest
from channels.db import database_sync_to_async
from django.db import connection, transaction
from django.test import Client

from console.fragments import Region
from console.live import hub as hub_module
from console.live.access import Grant
from console.live.hub import Hub, Part
from provisioning import actions
from provisioning.audit import announce, record_event

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def grant(operator) -> Grant:
    """A signed-in operator's grant, as a consumer holds it: the hub checks it before pushing."""
    client = Client()
    client.force_login(operator)
    return Grant(client.session.session_key, operator.pk, "operator")


class FakeSubscriber:
    """Counts renders and deliveries; stands in for a websocket consumer."""

    def __init__(self, topics, grant: Grant, key=("k",)):
        self.topics = set(topics)
        self.grant = grant
        self.revoked: list[int] = []
        self.key = key
        self.renders = 0
        self.delivered: list[str] = []
        self.got = asyncio.Event()

    needs_full = False

    def parts(self):
        return [Part(self.key, frozenset(self.topics), self._render)]

    def _render(self) -> list[Region]:
        self.renders += 1
        return [Region("x", f"<div id='x'>{self.renders}</div>")]

    async def deliver(self, html: str) -> None:
        self.delivered.append(html)
        self.got.set()

    async def revoke(self, code: int) -> None:
        self.revoked.append(code)


async def wait_delivery(subscriber, timeout=5.0):
    await asyncio.wait_for(subscriber.got.wait(), timeout)
    subscriber.got.clear()


@database_sync_to_async
def notify(topics):
    with transaction.atomic():
        announce(topics)


@contextlib.asynccontextmanager
async def running_hub(*subscribers):
    """A hub with ``subscribers`` whose listener is connected; stopped on leaving."""
    hub = Hub()
    for subscriber in subscribers:
        hub.add(subscriber)
    await asyncio.wait_for(hub.connected.wait(), 10)
    try:
        yield hub
    finally:
        await hub.stop()


async def test_a_notification_reaches_every_subscriber_of_its_topic_only(grant):
    first, second = FakeSubscriber({"tenant-1"}, grant), FakeSubscriber({"tenant-1"}, grant)
    other = FakeSubscriber({"tenant-2"}, grant, key=("other",))
    async with running_hub(first, second, other):
        await notify(["tenant-1"])
        await wait_delivery(first)
        await wait_delivery(second)
        assert other.delivered == []
        # One render for both sockets: they share a render key.
        assert first.renders + second.renders == 1
        assert first.delivered == second.delivered


async def test_a_rolled_back_change_is_never_pushed(grant):
    subscriber = FakeSubscriber({"audit"}, grant)

    @database_sync_to_async
    def rolled_back():
        with pytest.raises(RuntimeError), transaction.atomic():
            record_event("tenant.created")
            raise RuntimeError

    async with running_hub(subscriber):
        await rolled_back()
        await asyncio.sleep(0.5)
        assert subscriber.delivered == []


async def test_a_burst_of_notifications_renders_once(grant):
    subscriber = FakeSubscriber({"tenants"}, grant)

    @database_sync_to_async
    def burst():
        for _ in range(20):
            with transaction.atomic():
                announce(["tenants"])

    async with running_hub(subscriber):
        await burst()
        await wait_delivery(subscriber)
        await asyncio.sleep(0.3)
        assert subscriber.renders <= 3


async def test_the_listener_reconnects_and_refreshes_everyone(grant, monkeypatch):
    monkeypatch.setattr(hub_module, "BACKOFF_START", 0.1)
    subscriber = FakeSubscriber({"tenant-9"}, grant)

    @database_sync_to_async
    def kill_listener():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'tenant-console-listener' "
                "AND datname = current_database()"
            )

    async with running_hub(subscriber) as hub:
        await kill_listener()
        await wait_delivery(subscriber, timeout=10)  # the full refresh after reconnect
        assert hub.listener_generation == 2
        await notify(["tenant-9"])
        await wait_delivery(subscriber)


async def test_while_a_run_is_live_pages_resync_without_any_notification(grant, plans, monkeypatch):
    monkeypatch.setattr(hub_module, "RESYNC_SECONDS", 0.2)
    tenant = await database_sync_to_async(actions.create_tenant)(
        slug="acme", org="demo", plan="free", admin_email="a@example.com"
    )
    subscriber = FakeSubscriber({f"tenant-{tenant.pk}"}, grant)
    async with running_hub(subscriber):
        await wait_delivery(subscriber, timeout=5)
        assert subscriber.renders >= 1


async def test_a_change_landing_while_a_socket_renders_its_first_state_is_pushed_after(grant):
    """A consumer reads ``notified``, renders, then joins: what came in between is re-sent."""
    async with running_hub(FakeSubscriber({"audit"}, grant)) as hub:
        quiet = FakeSubscriber({"tenant-4"}, grant)
        hub.join(quiet, hub.notified)  # nothing arrived since: nothing to re-send
        late = FakeSubscriber({"tenant-5"}, grant, key=("late",))
        since = hub.notified
        await notify(["tenant-5"])  # lands after the first render, before joining
        for _ in range(100):
            if hub.notified > since:
                break
            await asyncio.sleep(0.05)
        assert hub.notified > since
        hub.join(late, since)
        await wait_delivery(late)
        await asyncio.sleep(0.3)
        assert quiet.delivered == []


async def test_the_first_socket_is_rendered_again_once_the_listener_listens(grant):
    """Before LISTEN nothing is heard, so a change then could miss the first render."""
    hub = Hub()
    first = FakeSubscriber({"tenant-6"}, grant)
    try:
        hub.join(first, hub.notified)  # starts the listener
        await asyncio.wait_for(hub.connected.wait(), 10)
        await wait_delivery(first)
        assert first.renders == 1
    finally:
        await hub.stop()


async def test_the_first_notification_renders_at_once_and_the_rest_coalesce(grant, monkeypatch):
    monkeypatch.setattr(hub_module, "COALESCE_SECONDS", 1.5)
    subscriber = FakeSubscriber({"tenants"}, grant)
    async with running_hub(subscriber):
        await notify(["tenants"])
        await wait_delivery(subscriber, timeout=1.0)  # at once, not after the window
        await notify(["tenants"])
        await notify(["tenants"])
        with pytest.raises(asyncio.TimeoutError):
            await wait_delivery(subscriber, timeout=0.5)  # held behind the first
        await wait_delivery(subscriber, timeout=3)
        assert subscriber.renders == 2  # the two later ones: one render


async def test_every_socket_hears_a_heartbeat_that_renders_nothing(grant, settings):
    settings.LIVE_HEARTBEAT_SECONDS = 0.2
    subscriber = FakeSubscriber({"tenant-3"}, grant)
    async with running_hub(subscriber):
        await wait_delivery(subscriber, timeout=5)
        assert subscriber.delivered == [hub_module.HEARTBEAT]
        assert subscriber.renders == 0


async def test_a_notification_with_other_keys_is_read_and_a_bad_one_ignored(grant):
    subscriber = FakeSubscriber({"tenant-7"}, grant)
    async with running_hub(subscriber) as hub:
        hub._on_notify('{"topics": ["tenant-7"], "seq": 5, "kind": "step", "extra": [1]}')
        await wait_delivery(subscriber)
        for bad in ("not json", "[1, 2]", '{"topics": 7}', "null"):
            hub._on_notify(bad)
        await asyncio.sleep(0.3)
        assert subscriber.renders == 1
