"""Websocket consumers through the real ASGI stack: auth, origin, catch-up, bad frames."""

import json

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from console.asgi import application
from console.live.hub import stop_hub
from provisioning import actions

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest_asyncio.fixture(autouse=True)
async def hub_stopped_after_each_test():
    yield
    await stop_hub()  # closes the listener's connection before the next test


@database_sync_to_async
def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}".encode()


@database_sync_to_async
def make_tenant(slug="acme"):
    return actions.create_tenant(slug=slug, org="demo", plan="free", admin_email="a@example.com")


def communicator(path, cookie=None, origin=None):
    """A client of the real ASGI app; by default from the console's own page (SITE_URL)."""
    headers = [(b"origin", origin or settings.SITE_URL.encode()), (b"host", b"localhost:8000")]
    if cookie:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, path, headers=headers)


async def open_detail(tenant, cookie) -> tuple[WebsocketCommunicator, str]:
    """A tenant's detail socket, connected, and the full state it sends first."""
    ws = communicator(f"/ws/tenants/{tenant.slug}/", cookie)
    await ws.connect()
    return ws, await ws.receive_from(timeout=5)


async def assert_signed_out(ws: WebsocketCommunicator) -> None:
    """The socket says "signed out" (4401) before sending any state, and closes."""
    connected, _ = await ws.connect()
    assert connected  # accepted only so that the page learns why
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
    await ws.disconnect()


async def test_an_anonymous_socket_is_refused(plans):
    tenant = await make_tenant()
    await assert_signed_out(communicator(f"/ws/tenants/{tenant.slug}/"))


async def test_a_foreign_origin_is_refused(operator):
    cookie = await session_cookie(operator)
    ws = communicator("/ws/tenants/", cookie, origin=b"http://evil.example.com")
    connected, _ = await ws.connect()
    assert not connected


async def test_an_unknown_or_malformed_slug_is_refused(operator):
    cookie = await session_cookie(operator)
    for path in ("/ws/tenants/ghost/", "/ws/tenants/Bad_Slug/"):
        ws = communicator(path, cookie)
        connected, _ = await ws.connect()
        assert not connected


async def test_on_connect_the_detail_socket_sends_the_full_state(operator):
    tenant = await make_tenant()
    ws = communicator(f"/ws/tenants/{tenant.slug}/", await session_cookie(operator))
    connected, _ = await ws.connect()
    assert connected
    html = await ws.receive_from(timeout=5)
    assert 'hx-swap-oob="morph"' in html
    assert "acme" in html
    assert "Validate request" in html  # the timeline, all of it, not a diff
    await ws.disconnect()


async def test_a_reconnecting_tab_catches_up_with_what_it_missed(operator):
    tenant = await make_tenant()
    cookie = await session_cookie(operator)
    ws, first = await open_detail(tenant, cookie)
    await ws.disconnect()
    # While the tab is away, the operator cancels (the tab hears nothing).
    await database_sync_to_async(actions.request_cancel)(tenant, user=operator)
    again, caught_up = await open_detail(tenant, cookie)
    assert caught_up != first
    assert "ancel" in caught_up  # the cancel shows without any notification
    await again.disconnect()


async def test_list_and_audit_sockets_send_their_state_on_connect(operator):
    await make_tenant("beta")
    cookie = await session_cookie(operator)
    for path in ("/ws/tenants/?state=provisioning&q=be", "/ws/audit/?type=tenant.created"):
        ws = communicator(path, cookie)
        connected, _ = await ws.connect()
        assert connected, path
        html = await ws.receive_from(timeout=5)
        assert "beta" in html, path
        await ws.disconnect()


async def test_bad_query_parameters_fall_back_to_defaults(operator):
    cookie = await session_cookie(operator)
    ws = communicator("/ws/tenants/?state=%00nonsense&q=" + "x" * 500, cookie)
    connected, _ = await ws.connect()
    assert connected
    assert await ws.receive_from(timeout=5)
    await ws.disconnect()


async def test_bad_frames_get_an_error_frame_and_change_nothing(operator):
    tenant = await make_tenant()
    ws, _ = await open_detail(tenant, await session_cookie(operator))
    while not await ws.receive_nothing(timeout=0.3):  # the hub may send the first state again
        await ws.receive_output()
    for frame in ("not json", json.dumps({"action": "drop tables"}), "x" * 10_000):
        await ws.send_to(text_data=frame)
        reply = await ws.receive_from(timeout=5)
        assert 'id="live-error"' in reply and "nothing was done" in reply
    await ws.send_to(bytes_data=b"\x00\x01")
    assert "Binary frames" in await ws.receive_from(timeout=5)
    await ws.send_to(text_data=json.dumps({"action": "refresh"}))
    assert "Validate request" in await ws.receive_from(timeout=5)
    await ws.disconnect()


async def test_a_change_is_pushed_to_a_connected_tab(operator):
    tenant = await make_tenant()
    ws, _ = await open_detail(tenant, await session_cookie(operator))
    await database_sync_to_async(actions.request_cancel)(tenant, user=operator, reason="test")
    pushed = await ws.receive_from(timeout=5)
    assert "ancel" in pushed
    await ws.disconnect()
