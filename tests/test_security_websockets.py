"""Websocket security through the real ASGI app: who may open a socket, and for how long.

A tenant's page (untrusted content) or another site must not open the
console's sockets with an operator's cookies; a socket whose user signed
out, was deactivated or lost the operators group stops at its next push.
"""

import asyncio
import json
import time
from importlib import import_module

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from console.live import access
from console.live import hub as hub_module
from console.live.hub import get_hub, stop_hub
from provisioning.audit import announce, record_event
from tests.test_consumers import assert_signed_out, communicator, make_tenant, open_detail

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest_asyncio.fixture(autouse=True)
async def hub_stopped_after_each_test(monkeypatch):
    # The tenants' runs are live (queued), so the hub would resync their pages
    # every 2 s: pushes here come only when a test makes them.
    monkeypatch.setattr(hub_module, "RESYNC_SECONDS", 3600)
    yield
    await stop_hub()


@pytest.fixture
def console_origins(settings):
    settings.SITE_URL = "http://localhost:8000"
    settings.CSRF_TRUSTED_ORIGINS = ["https://console.example.com"]
    settings.BASE_DOMAIN = "localhost:8000"


@pytest.fixture
def signed_in(operator):
    """An operator's browser: its session (a real row) and the cookie a page sends."""
    client = Client()
    client.force_login(operator)
    return client


def cookie_of(client: Client) -> bytes:
    morsel = client.cookies[settings.SESSION_COOKIE_NAME]
    return f"{morsel.key}={morsel.value}".encode()


async def push(tenant) -> None:
    """A committed change announced for the tenant's page, as every action does."""

    @database_sync_to_async
    def announce_change():
        with transaction.atomic():
            announce([f"tenant-{tenant.pk}"])

    await announce_change()


async def settled(tenant, cookie: bytes):
    """A detail socket whose catch-up frames are all read (the hub may re-send the first state)."""
    ws, first = await open_detail(tenant, cookie)
    while not await ws.receive_nothing(timeout=0.3):
        await ws.receive_output()
    return ws, first


async def closed_with(ws, code: int) -> None:
    """The next thing the socket gets is its close, with ``code``: no more state."""
    assert await ws.receive_output(timeout=10) == {"type": "websocket.close", "code": code}
    await ws.disconnect()


# -- origins ----------------------------------------------------------------


@pytest.mark.parametrize("origin", [b"http://localhost:8000", b"https://console.example.com"])
async def test_the_consoles_own_origins_connect(console_origins, signed_in, origin):
    ws = communicator("/ws/tenants/", cookie_of(signed_in), origin=origin)
    connected, _ = await ws.connect()
    assert connected
    assert 'hx-swap-oob="morph"' in await ws.receive_from(timeout=5)  # the list's state
    await ws.disconnect()


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param(b"http://localhost:8001", id="wrong port"),
        pytest.param(b"http://localhost", id="default port"),
        pytest.param(b"https://localhost:8000", id="wrong scheme"),
        pytest.param(b"http://console.example.com", id="listed host, wrong scheme"),
        pytest.param(b"http://acme-demo.localhost:8000", id="tenant host"),
        pytest.param(b"http://x.localhost:8000", id="under BASE_DOMAIN"),
        pytest.param(b"http://evil.example.com", id="foreign host"),
        pytest.param(b"http://localhost.:8000", id="trailing dot"),
        pytest.param(b"null", id="opaque origin"),
        pytest.param(b"http://localhost:99999", id="port out of range"),
        pytest.param(b"http://[::1", id="malformed"),
        pytest.param(b"", id="empty"),
        pytest.param(None, id="missing"),
    ],
)
async def test_any_other_origin_is_refused_before_accepting(console_origins, signed_in, origin):
    ws = communicator("/ws/tenants/", cookie_of(signed_in))
    ws.scope["headers"] = [(k, v) for k, v in ws.scope["headers"] if k != b"origin"]
    if origin is not None:
        ws.scope["headers"].append((b"origin", origin))
    connected, code = await ws.connect()
    assert not connected and code == 1000  # closed in the handshake: an HTTP 403


async def test_a_tenant_host_is_refused_even_when_listed(console_origins, settings, signed_in):
    settings.CSRF_TRUSTED_ORIGINS = ["http://acme-demo.localhost:8000"]
    ws = communicator(
        "/ws/tenants/", cookie_of(signed_in), origin=b"http://acme-demo.localhost:8000"
    )
    connected, _ = await ws.connect()
    assert not connected


async def test_two_origin_headers_are_refused(console_origins, signed_in):
    ws = communicator("/ws/tenants/", cookie_of(signed_in))
    ws.scope["headers"].append((b"origin", b"http://evil.example.com"))
    connected, _ = await ws.connect()
    assert not connected


# -- the session, on every delivery ------------------------------------------


async def test_a_socket_is_closed_at_the_next_push_after_its_user_signs_out(signed_in):
    tenant = await make_tenant()
    ws, _ = await settled(tenant, cookie_of(signed_in))
    await database_sync_to_async(signed_in.logout)()  # deletes the session, as the page does
    await asyncio.sleep(access.CHECK_SECONDS)  # past the time a check is trusted
    await push(tenant)
    await closed_with(ws, access.SIGNED_OUT)


async def test_a_socket_is_closed_at_the_next_push_after_its_user_is_deactivated(
    signed_in, operator
):
    tenant = await make_tenant()
    ws, _ = await settled(tenant, cookie_of(signed_in))
    operator.is_active = False
    await database_sync_to_async(operator.save)()
    await asyncio.sleep(access.CHECK_SECONDS)
    await push(tenant)
    await closed_with(ws, access.SIGNED_OUT)


async def test_a_socket_is_closed_after_its_users_password_changes(signed_in, operator):
    tenant = await make_tenant()
    ws, _ = await settled(tenant, cookie_of(signed_in))
    operator.set_password("another-password")  # other sessions end, as on a page
    await database_sync_to_async(operator.save)()
    await asyncio.sleep(access.CHECK_SECONDS)
    await push(tenant)
    await closed_with(ws, access.SIGNED_OUT)


async def test_a_socket_is_closed_when_its_user_leaves_the_operators_and_reopens_as_viewer(
    signed_in, operator
):
    tenant = await make_tenant()
    cookie = cookie_of(signed_in)
    ws, as_operator = await settled(tenant, cookie)

    @database_sync_to_async
    def leave_operators():
        operator.groups.remove(Group.objects.get(name="operators"))

    await leave_operators()
    await asyncio.sleep(access.CHECK_SECONDS)
    await push(tenant)
    await closed_with(ws, access.ROLE_CHANGED)
    # The page reconnects (it reloads) and now gets the viewer's view.
    again, as_viewer = await open_detail(tenant, cookie)
    assert as_viewer != as_operator
    await again.disconnect()


async def test_the_resync_of_a_live_run_closes_a_signed_out_socket_too(signed_in, monkeypatch):
    monkeypatch.setattr(hub_module, "RESYNC_SECONDS", 0.2)
    tenant = await make_tenant()  # its run is queued: live, so its page resyncs
    ws, _ = await open_detail(tenant, cookie_of(signed_in))
    await database_sync_to_async(signed_in.logout)()
    deadline = time.monotonic() + 10
    while (out := await ws.receive_output(timeout=10))["type"] == "websocket.send":
        assert time.monotonic() < deadline  # resyncs rendered before the check noticed
    assert out == {"type": "websocket.close", "code": access.SIGNED_OUT}
    await ws.disconnect()


async def test_a_refresh_frame_after_sign_out_closes_instead_of_answering(signed_in):
    tenant = await make_tenant()
    ws, _ = await settled(tenant, cookie_of(signed_in))
    await database_sync_to_async(signed_in.logout)()
    await asyncio.sleep(access.CHECK_SECONDS)
    await ws.send_to(text_data=json.dumps({"action": "refresh"}))
    await closed_with(ws, access.SIGNED_OUT)


async def test_a_reconnect_with_a_dead_session_is_refused(signed_in, operator):
    tenant = await make_tenant()
    cookie = cookie_of(signed_in)
    ws, _ = await open_detail(tenant, cookie)
    await ws.disconnect()
    await database_sync_to_async(signed_in.logout)()
    await assert_signed_out(communicator(f"/ws/tenants/{tenant.slug}/", cookie))


async def test_a_deactivated_user_cannot_reconnect(signed_in, operator):
    operator.is_active = False
    await database_sync_to_async(operator.save)()
    await assert_signed_out(communicator("/ws/audit/", cookie_of(signed_in)))


@pytest.mark.parametrize(
    "cookie", [b"sessionid=nonexistentkey123", b"sessionid=a\x00b" + b"c" * 30, b"sessionid="]
)
async def test_a_made_up_session_cookie_is_signed_out(plans, cookie):
    await assert_signed_out(communicator("/ws/tenants/", cookie))


async def test_a_socket_whose_session_holds_keeps_getting_pushes(signed_in):
    tenant = await make_tenant()
    ws, _ = await settled(tenant, cookie_of(signed_in))
    await asyncio.sleep(access.CHECK_SECONDS)  # so the push checks again, and passes

    @database_sync_to_async
    def change():
        with transaction.atomic():
            record_event("tenant.provisioning.reset", tenant=tenant, details={"attempt": 1})

    await change()
    assert "Attempt 1 reset" in await ws.receive_from(timeout=5)  # what changed: the event
    await ws.disconnect()


# -- hostile frames ------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 2000 + "]" * 2000,  # nested past Python's recursion limit
        "9" * 4096,  # a number as long as a frame may be
        "null",
        "[]",
        '"refresh"',
        '{"action": ["refresh"]}',
        '{"action": "refresh\\u0000"}',
    ],
)
async def test_a_hostile_frame_gets_an_error_frame_and_the_socket_lives(signed_in, frame):
    tenant = await make_tenant()
    ws, _ = await settled(tenant, cookie_of(signed_in))
    await ws.send_to(text_data=frame)
    assert 'id="live-error"' in await ws.receive_from(timeout=5)
    await ws.send_to(text_data=json.dumps({"action": "refresh"}))
    assert "Validate request" in await ws.receive_from(timeout=5)
    await ws.disconnect()


# -- what the check costs ------------------------------------------------------------


class Socket:
    """Stands in for a consumer at the gate."""

    def __init__(self, grant):
        self.grant = grant
        self.revoked: list[int] = []

    async def revoke(self, code: int) -> None:
        self.revoked.append(code)


@database_sync_to_async
def grants(user, sessions: int) -> list[access.Grant]:
    keys = []
    for _ in range(sessions):
        client = Client()
        client.force_login(user)
        keys.append(client.session.session_key)
    return [access.Grant(key, user.pk, "operator") for key in keys]


async def test_a_push_to_many_sockets_checks_each_session_once_per_interval(operator, monkeypatch):
    checked = []  # the session keys the gate asks about
    check = access.signed_in_users

    def counted(keys):
        checked.extend(keys)
        return check(keys)

    monkeypatch.setattr(access, "signed_in_users", counted)
    gate = get_hub().gate
    timings = {}

    one_session = [Socket(g) for g in await grants(operator, 1) for _ in range(100)]
    many_sessions = [Socket(g) for g in await grants(operator, 100)]
    for name, sockets, checks in [
        ("100 sockets, 1 session", one_session, 1),
        ("100 sockets, 100 sessions", many_sessions, 100),
    ]:
        checked.clear()
        started = time.perf_counter()
        assert len(await gate.admit(sockets)) == 100
        timings[name] = time.perf_counter() - started
        assert len(checked) == checks
        started = time.perf_counter()
        assert len(await gate.admit(sockets)) == 100  # within CHECK_SECONDS: trusted
        timings[f"{name}, again at once"] = time.perf_counter() - started
        assert len(checked) == checks
    print({name: f"{seconds * 1000:.1f} ms" for name, seconds in timings.items()})


async def test_checking_many_sessions_costs_a_query_per_user_not_per_session(operator):
    @database_sync_to_async
    def queries_to_check(grants) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert set(access.verdicts(grants).values()) == {None}
        return len(queries)

    @database_sync_to_async
    def operators(count: int) -> list:
        group = Group.objects.get(name="operators")
        users = [User.objects.create(username=f"op{n}") for n in range(count)]
        for user in users:
            user.groups.add(group)
        return users

    # 100 sessions of one operator: the sessions, the user, their groups.
    assert await queries_to_check(await grants(operator, 100)) == 3
    # 10 operators with 10 sessions each: the sessions, then a user and groups each.
    ten = [g for user in await operators(10) for g in await grants(user, 10)]
    assert await queries_to_check(ten) == 1 + 10 + 10


async def test_grants_pushed_to_lately_are_checked_again_before_their_answer_runs_out(
    operator, monkeypatch
):
    """The warming check: a push a second later finds the answer fresh and asks nothing."""
    checked = []
    check = access.signed_in_users

    def counted(keys):
        checked.extend(keys)
        return check(keys)

    monkeypatch.setattr(access, "signed_in_users", counted)
    gate = access.Gate()
    pushed, idle = [Socket(g) for g in await grants(operator, 2)]
    assert await gate.admit([pushed]) == [pushed]  # a push: checked once
    gate.note(idle.grant)  # a connect: checked, but not pushed to
    assert gate.pushed_lately() == {pushed.grant}
    await asyncio.sleep(access.CHECK_SECONDS * 0.6)
    checked.clear()
    # The warming call: only what runs out within `ahead` is asked about again.
    assert await gate.admit([pushed], ahead=access.CHECK_SECONDS / 2) == [pushed]
    assert checked == [pushed.grant.session_key]
    await asyncio.sleep(access.CHECK_SECONDS * 0.6)  # past the first answer, not the second
    checked.clear()
    assert await gate.admit([pushed, idle]) == [pushed, idle]
    assert checked == [idle.grant.session_key]  # the warmed grant needed no check


async def test_the_warming_check_closes_a_signed_out_socket_without_a_push(operator):
    class Member(Socket):
        topics: set = set()

        def parts(self):
            return []

    hub = hub_module.Hub()
    (grant,) = await grants(operator, 1)
    socket = Member(grant)
    hub.members.add(socket)
    assert await hub.admit([socket]) == [socket]  # pushed to: now warmed
    store = import_module(settings.SESSION_ENGINE).SessionStore
    await database_sync_to_async(store(grant.session_key).delete)()  # signed out elsewhere
    task = asyncio.ensure_future(hub._warm_loop())
    try:
        for _ in range(50):
            if socket.revoked:
                break
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
    assert socket.revoked == [access.SIGNED_OUT]
    assert socket not in hub.members
