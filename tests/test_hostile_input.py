"""Hostile input never causes a 500: every route, socket and command, sent what an
attacker or a careless user sends.

Routes come from the URL resolver and sockets from the websocket router, so a
page added later is covered without touching this module. Every answer is
checked the same way: a status below 500, no traceback in the body, hostile
HTML never echoed unescaped, and no row of the console's own models created
or changed.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from io import StringIO
from urllib.parse import quote, urlencode

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.apps import apps
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import CommandError
from django.test import Client
from django.urls import URLResolver, get_resolver
from django.utils.regex_helper import normalize
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from console.routing import websocket_urlpatterns
from provisioning.models import AuditEvent, Route
from tenants.validation import is_label
from tests.conftest import ROOT, subprocess_env
from tests.views_support import activate, create

SCRIPT = "<script>alert(1)</script>"
HOSTILE = [
    "²",  # str.isdigit() says yes, int() raises
    "٣",  # Arabic-Indic three: int() reads it as 3
    "１",  # fullwidth one
    "99999999999999999999",
    "\x00",  # PostgreSQL refuses NUL in text
    "acme\x00",
    "x" * 10_000,
    "аcme",  # Cyrillic "а"
    "ａｃｍｅ",  # fullwidth
    "acme\n",
    "' OR 1=1 --",
    "1; DROP TABLE x",
    SCRIPT,
    "../../../etc/passwd",
    "a\r\nSet-Cookie: pwned=1",
    "%00",  # encoded twice
]
# Django's own admin gets a sample, to keep the module quick.
ADMIN_HOSTILE = ["\x00", "x" * 10_000, SCRIPT]

# Every query parameter a view reads (the console's and the admin's).
QUERY_PARAMS = ["q", "state", "type", "tenant", "page", "hours", "limit", "next", "o", "p", "e"]
# Every form field a view reads: the create form, the action dialogs, sign-in.
FORM_FIELDS = [
    "slug", "org", "plan", "admin_email", "faults", "check", "reason", "force", "confirm_slug",
    "username", "password", "old_password", "new_password1", "new_password2", "token",
]  # fmt: skip
# Views that act on a POST without reading a field: sending them a valid path
# does what they are for, so they get hostile paths only.
ACT_WITHOUT_FIELDS = {"dismiss-failure", "logout", "admin:logout"}
# Views whose one field is free text (Repair's required reason): any printable
# value, "<script>" included, is a valid request that does what they are for
# (stored as text, escaped when shown), so they too get hostile paths only;
# tests/test_views_repair.py checks that what is not text is refused.
ACT_ON_ANY_TEXT = {"tenant-repair"}


def routes() -> list[tuple[str, tuple[str, ...], str]]:
    """(path format, parameter names, name) for every URL pattern, admin included."""
    found = []

    def walk(patterns, prefix: str, params: tuple, namespace: str) -> None:
        for pattern in patterns:
            fmt, names = normalize(pattern.pattern.regex.pattern)[0]
            if isinstance(pattern, URLResolver):
                ns = f"{pattern.namespace}:" if pattern.namespace else namespace
                walk(pattern.url_patterns, prefix + fmt, params + tuple(names), ns)
            else:
                name = f"{namespace}{pattern.name or fmt}"
                found.append(("/" + prefix + fmt, params + tuple(names), name))

    walk(get_resolver().url_patterns, "", (), "")
    return found


def model_rows() -> dict[str, list]:
    """Every row of the console's own models (and users and groups), to compare."""
    models = [*apps.get_app_config("tenants").get_models()]
    models += apps.get_app_config("provisioning").get_models()
    models += apps.get_app_config("console").get_models()  # API tokens, idempotency keys
    snapshot = {}
    for model in models:
        snapshot[model._meta.label] = list(model.objects.order_by("pk").values())
    snapshot["users"] = list(User.objects.order_by("pk").values())
    for row in snapshot["users"]:
        row.pop("last_login", None)  # signing the test's clients in sets it
    snapshot["groups"] = list(Group.objects.order_by("pk").values_list("name", flat=True))
    return snapshot


def assert_clean(status: int, body: bytes, content_type: str, what: str) -> None:
    assert status < 500, f"{what}: {status}"
    assert b"Traceback" not in body and b"Exception Value" not in body, what
    if "html" in content_type:
        assert SCRIPT.encode() not in body, f"{what}: echoed unescaped"


def check(response, what: str) -> None:
    assert_clean(response.status_code, response.content, response.get("Content-Type", ""), what)


def fill(fmt: str, names, value: str | None, valid: dict) -> str:
    """The path with every parameter ``value`` (URL-quoted), or valid values when None."""
    args = {n: quote(value, safe="") if value is not None else valid.get(n, "1") for n in names}
    return fmt % args


@pytest.fixture
def world(operator):
    """An active tenant the operator made, an admin, and valid values for path parameters."""
    # Not "acme": "acme\n" is one of the hostile values, and the forms strip whitespace.
    tenant = create(operator, slug="globex")
    activate(tenant)
    admin = User.objects.create_superuser("ada", "ada@example.com", "pw-adaada")
    valid = {
        "slug": tenant.slug,
        "object_id": str(tenant.pk),
        "app_label": "tenants",
        "run_id": str(tenant.runs.first().pk),
    }
    return {"tenant": tenant, "admin": admin, "valid": valid}


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def hx_headers(value: str, n: int) -> dict:
    """The htmx headers the app reads, hostile, on every other request."""
    if n % 2:
        return {"HX-Request": "true", "HX-Target": value[:200], "HX-Current-URL": value[:200]}
    return {}


@pytest.mark.django_db
def test_every_route_answers_hostile_paths_and_query_values_without_a_500(world, operator):
    before = model_rows()
    console, admin = signed_in(operator), signed_in(world["admin"])
    sent = 0
    for fmt, names, name in routes():
        is_admin = name.startswith("admin:")
        client = admin if is_admin else console
        for n, value in enumerate(ADMIN_HOSTILE if is_admin else HOSTILE):
            query = "?" + urlencode(dict.fromkeys(QUERY_PARAMS, value))
            paths = [fill(fmt, names, value, {}) + query]
            if names:  # the query again, behind a path that exists
                paths.append(fill(fmt, names, None, world["valid"]) + query)
            for path in paths:
                check(client.get(path, headers=hx_headers(value, n)), f"GET {name} {value[:20]!r}")
                sent += 1
            if names and not is_admin:  # the admin's POSTs look objects up as its GETs do
                path = fill(fmt, names, value, {})
                check(
                    client.post(path, headers=hx_headers(value, n)), f"POST {name} {value[:20]!r}"
                )
                sent += 1
    assert model_rows() == before
    assert sent > 1000  # every route, every value


def form_routes():
    for fmt, names, name in routes():
        if name.startswith("admin:") or name in ACT_WITHOUT_FIELDS | ACT_ON_ANY_TEXT:
            continue
        yield pytest.param(fmt, names, name, id=name)


@pytest.mark.django_db
@pytest.mark.parametrize(("fmt", "names", "name"), list(form_routes()))
def test_every_form_answers_hostile_fields_without_a_500_or_a_change(
    world, operator, settings, fmt, names, name
):
    settings.PROVISIONING_FAULTS_ENABLED = True  # so the create form has its faults field
    before = model_rows()
    console = signed_in(operator)
    path = fill(fmt, names, None, world["valid"])
    for n, value in enumerate(HOSTILE):
        data = dict.fromkeys(FORM_FIELDS, value)
        check(console.post(path, data, headers=hx_headers(value, n)), f"{value[:20]!r}")
        console.force_login(operator)  # a hostile sign-in form signs the client out
    assert model_rows() == before


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["slug", "org", "plan", "admin_email", "faults"])
def test_the_create_form_refuses_each_hostile_field_alone(operator, settings, field):
    """One bad field among good ones: refused with a message on the field, nothing created."""
    settings.PROVISIONING_FAULTS_ENABLED = True
    console = signed_in(operator)
    good = {"slug": "fresh", "org": "demo", "plan": "free", "admin_email": "a@example.com"}
    before = model_rows()
    for value in HOSTILE:
        if field in ("slug", "org") and is_label(value.strip()):
            continue  # digits make a fine label, and the form strips a trailing newline
        for extra in ({}, {"check": "1"}):  # create, and "Check" (the dry run)
            response = console.post("/tenants/new/", {**good, field: value, **extra})
            check(response, f"{field}={value[:20]!r} {extra}")
            assert response.status_code == 200, (field, value)  # the form again, with errors
    assert model_rows() == before


@pytest.mark.django_db
def test_the_probed_requests_are_refused_or_read_as_defaults(world, operator):
    """The 500s the probe found: 400 for a NUL in the path, 404 for a slug that cannot be one,
    defaults for numbers that are not ASCII digits."""
    console = signed_in(operator)
    for path in ("/tenants/%00/", "/api/tenants/%00", "/tenants/acme%00/retry/"):
        response = console.post(path) if path.endswith("retry/") else console.get(path)
        assert response.status_code == 400, path
        assert response.content == b"Bad request: the URL contains a NUL byte."
    for path in ("/tenants/%D0%B0cme/", "/tenants/acme%0A/", "/api/tenants/" + "a" * 10_000):
        assert console.get(path).status_code == 404, path
    assert console.post("/tenants/%D0%B0cme/retry/").status_code == 404
    body = console.get("/api/provisioning/recent-failures?hours=%C2%B2&limit=%C2%B3").json()
    assert (body["hours"], body["limit"]) == (24, 1)
    body = console.get("/api/provisioning/recent-failures?hours=%D9%A3&limit=%EF%BC%91").json()
    assert (body["hours"], body["limit"]) == (24, 1)  # not 3 and 1: only ASCII digits count
    assert console.get("/audit/?page=%C2%B2").status_code == 200
    response = console.get("/?q=%00glob")
    assert response.status_code == 200
    assert world["tenant"].slug in response.content.decode()  # the NUL is dropped, not the search


@pytest.mark.django_db
def test_a_hostile_reason_is_kept_as_text_and_shown_escaped(operator):
    """A reason is free text: SQL and HTML in it are stored verbatim and rendered inert."""
    console = signed_in(operator)
    tenant = create(operator)
    reason = f"' OR 1=1 -- {SCRIPT}"
    response = console.post(f"/tenants/{tenant.slug}/cancel/", {"reason": reason})
    assert response.status_code == 302
    event = AuditEvent.objects.get(type="tenant.provisioning.cancel_requested")
    assert event.details["reason"] == reason
    page = console.get(f"/tenants/{tenant.slug}/").content.decode()
    assert SCRIPT not in page and "&lt;script&gt;" in page


@pytest.mark.django_db
def test_a_reason_with_a_nul_is_refused_and_changes_nothing(operator):
    console = signed_in(operator)
    tenant = create(operator)
    before = model_rows()
    response = console.post(f"/tenants/{tenant.slug}/cancel/", {"reason": "stop\x00"}, follow=True)
    assert response.status_code == 200 and "Null characters are not allowed" in (
        response.content.decode()
    )
    assert model_rows() == before


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(max_size=80))
def test_any_text_in_a_slug_or_a_query_parameter_is_answered_without_a_500(world, operator, value):
    console = signed_in(operator)
    quoted = quote(value, safe="")
    query = urlencode(dict.fromkeys(QUERY_PARAMS, value))
    for path in (
        f"/tenants/{quoted}/",
        f"/api/tenants/{quoted}",
        f"/?{query}",
        f"/audit/?{query}",
        f"/api/provisioning/recent-failures?{query}",
    ):
        check(console.get(path), f"GET {path[:60]}")
    check(console.post(f"/tenants/{quoted}/cancel/", {"reason": value}), "POST cancel")


# --- commands ---------------------------------------------------------------

# Non-UTF-8 bytes on a command line reach Python as lone surrogates.
COMMAND_HOSTILE = [*HOSTILE, "\udcff\udcfe", "acme\udcff"]
BASE_OPTIONS = {
    "help", "version", "verbosity", "settings", "pythonpath", "traceback", "no_color",
    "force_color", "skip_checks",
}  # fmt: skip
OUR_APPS = {"tenants", "provisioning", "console"}
# django-q2's worker daemon, which provisioning only subclasses: a valid --name
# starts a cluster that runs until stopped. Its --name check is tested below.
DAEMONS = {"qcluster"}


def our_commands() -> list[tuple[str, list]]:
    """(name, [the arguments that take a value]) for each of the project's commands."""
    found = []
    for name, app in sorted(get_commands().items()):
        if app not in OUR_APPS or name in DAEMONS:
            continue
        parser = load_command_class(app, name).create_parser("manage.py", name)
        takes_values = [
            action
            for action in parser._actions
            if action.dest not in BASE_OPTIONS and action.nargs != 0 and action.const is None
        ]
        found.append((name, takes_values))
    return found


@pytest.mark.parametrize("name", ["acme\n", "a b", "x" * 101, "\x00", "ａｃｍｅ", ""])
def test_qcluster_refuses_a_hostile_cluster_name_before_starting(name):
    with pytest.raises(CommandError, match="--name must be"):
        call_command("qcluster", "--name", name)


def argv_with(actions: list, value: str) -> list[str]:
    argv = []
    for action in actions:
        argv += [value] if not action.option_strings else [action.option_strings[-1], value]
    return argv


@pytest.mark.django_db
def test_every_command_refuses_hostile_arguments_with_one_line(world, faults_enabled, tmp_path):
    before = model_rows()
    checked = []
    for name, actions in our_commands():
        if not actions:
            continue  # flags only: nothing to send
        for value in COMMAND_HOSTILE:
            out, err = StringIO(), StringIO()
            with pytest.raises(CommandError) as refused:
                call_command(name, *argv_with(actions, value), stdout=out, stderr=err)
            message = str(refused.value)
            assert "\n" not in message and len(message) < 400, (name, value[:20], message)
            checked.append(name)
    assert {"provision_tenant", "tenant_status", "cancel_provisioning"} <= set(checked)
    assert model_rows() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    "option", ["--org", "--plan", "--admin-email", "--fault", "--timeout", "slug"]
)
def test_provision_refuses_each_weird_option_alone(plans, faults_enabled, option):
    good = {"slug": "fresh", "--org": "demo", "--plan": "free", "--admin-email": "a@example.com"}
    before = model_rows()
    for value in COMMAND_HOSTILE:
        if option in ("slug", "--org") and is_label(value.strip()):
            continue  # digits make a fine label, and a trailing newline is stripped
        if option == "--timeout" and value in ("٣", "１", "99999999999999999999"):
            continue  # float() reads these as positive numbers of seconds: fine
        args = {**good, option: value}
        argv = [args.pop("slug")] + [part for pair in args.items() for part in pair]
        with pytest.raises(CommandError) as refused:
            call_command("provision_tenant", *argv, "--dry-run", stdout=StringIO())
        assert "\n" not in str(refused.value)
        if option != "--timeout":  # --dry-run never waits; the real thing must refuse too
            with pytest.raises(CommandError):
                call_command("provision_tenant", *argv, stdout=StringIO())
    assert model_rows() == before


@pytest.mark.django_db
def test_a_reason_a_command_cannot_keep_is_refused_before_anything_changes(world):
    before = model_rows()
    for command in ("cancel_provisioning", "reset_provisioning", "retry_provisioning"):
        for reason in ("stop\x00", "x" * 10_000, "bad\udcffbytes", "two\nlines"):
            with pytest.raises(CommandError, match="--reason"):
                call_command(command, world["tenant"].slug, "--reason", reason)
    assert model_rows() == before


@pytest.mark.django_db
def test_on_a_real_command_line_bad_bytes_get_one_line_on_stderr():
    """Through exec, as an operator's shell runs it: non-UTF-8 and non-ASCII arguments."""
    cases = [
        [b"tenant_status", b"acme\xff"],
        [b"provision_tenant", b"fresh", b"--org", b"demo", b"--plan", b"fr\xffee",
         b"--admin-email", b"a@example.com", b"--dry-run"],
    ]  # fmt: skip
    for argv in cases:
        done = subprocess.run(
            [sys.executable.encode(), b"manage.py", *argv],
            cwd=ROOT,
            env=subprocess_env(),
            capture_output=True,
            timeout=60,
        )
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        assert done.returncode != 0, argv
        assert len(lines) == 1 and lines[0].startswith("CommandError: "), (argv, lines)


# --- websockets -------------------------------------------------------------


def socket_routes() -> list[tuple[str, tuple[str, ...]]]:
    return [
        ("/" + fmt, tuple(names))
        for pattern in websocket_urlpatterns
        for fmt, names in normalize(pattern.pattern.regex.pattern)[:1]
    ]


@database_sync_to_async
def session_cookie(user) -> bytes:
    client = signed_in(user)
    name = django_settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}".encode()


def communicator(path: str, cookie: bytes, query: bytes | None = None) -> WebsocketCommunicator:
    from console.asgi import application

    headers = [(b"origin", b"http://localhost:8000"), (b"host", b"localhost:8000")]
    ws = WebsocketCommunicator(application, path, headers=[*headers, (b"cookie", cookie)])
    if query is not None:
        ws.scope["query_string"] = query  # raw bytes, as a client can send them
    return ws


HOSTILE_FRAMES = [
    {"bytes_data": b"\x00\xff" * 10},
    {"bytes_data": b"x" * 100_000},
    {"text_data": "x" * 100_000},
    {"text_data": "not json"},
    {"text_data": "\x00"},
    {"text_data": "[1, 2, 3]"},
    {"text_data": '"refresh"'},
    {"text_data": "null"},
    {"text_data": '{"action": "drop"}'},
    {"text_data": '{"action": ["refresh"]}'},
    {"text_data": '{"action": "\\u0000"}'},
    {"text_data": "[" * 3000 + "]" * 3000},  # nesting past json's recursion limit
    {"text_data": '{"action": 1e999999}'},
]


async def exercise(ws: WebsocketCommunicator, what: str) -> bool:
    """Connect, then send every hostile frame: each must get an error frame back.

    Returns whether the socket was accepted. A crash in the consumer surfaces
    here, since the communicator re-raises the application's exception.
    """
    connected, _ = await ws.connect(timeout=5)
    if not connected:
        return False
    assert "Traceback" not in await ws.receive_from(timeout=5), what  # the full state
    for frame in HOSTILE_FRAMES:
        await ws.send_to(**frame)
        # A push of the hub (the tenant just created) may come first: the error frame follows.
        for _ in range(5):
            answer = await ws.receive_from(timeout=5)
            if 'id="live-error"' in answer:
                break
        else:
            raise AssertionError(f"{what}: no error frame for {str(frame)[:60]}")
    await ws.disconnect()
    return True


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_every_socket_refuses_or_answers_hostile_queries_slugs_and_frames(operator):
    from console.live.hub import stop_hub

    tenant = await database_sync_to_async(create)(operator)
    cookie = await session_cookie(operator)
    before = await database_sync_to_async(model_rows)()
    try:
        for fmt, names in socket_routes():
            valid = fmt % dict.fromkeys(names, tenant.slug)
            # Bad filters mean their defaults: the socket is accepted exactly when it is
            # without them (the catch-all route refuses every path).
            expected = await exercise(communicator(valid, cookie), valid)
            raw = b"page=\xb2&hours=\xc2\xb2&q=%00\xff&type=\x00&tenant=%D0%B0cme&state=\xfe"
            queries = [urlencode(dict.fromkeys(QUERY_PARAMS, v)).encode() for v in HOSTILE]
            for query in [*queries, raw]:
                what = f"{valid} ?{query[:30]!r}"
                assert await exercise(communicator(valid, cookie, query), what) == expected
            for value in HOSTILE if names else ():
                # The path as a client sends it, percent-encoded; a "%2F" arrives as "/".
                path = fmt % dict.fromkeys(names, quote(value, safe=""))
                assert not await exercise(communicator(path, cookie), path[:40])
    finally:
        await stop_hub()
    assert await database_sync_to_async(model_rows)() == before


# --- a real daphne ----------------------------------------------------------


def raw_request(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """Send bytes as they are (no client library tidies them) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    assert match, answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(match[1]), head, body


RAW_HOSTILE = [
    b"%00", b"acme%00", b"%C2%B2", b"%D9%A3", b"%EF%BC%91", b"%ff%fe", b"\xff", b"\xb2",
    b"%D0%B0cme", b"x" * 10_000, b"%27%20OR%201%3D1%20--", b"1%3B%20DROP%20TABLE%20x",
    b"%3Cscript%3Ealert(1)%3C%2Fscript%3E", b"..%2F..%2Fetc%2Fpasswd", b"a%0D%0ASet-Cookie:%20x=1",
]  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_against_daphne_hostile_bytes_in_paths_queries_forms_and_headers(
    settings, tmp_path, operator
):
    from tests.browser_support import served_console

    tenant = create(operator)
    activate(tenant)
    Route.objects.create(
        tenant=tenant, hostname=tenant.hostname, backends=["127.0.0.1:9"], enabled=False
    )
    before = model_rows()
    with served_console(settings, tmp_path) as (server, client):
        session = signed_in(operator).cookies[settings.SESSION_COOKIE_NAME].value
        client.cookies.set(settings.SESSION_COOKIE_NAME, session)
        assert client.get("/tenants/new/").status_code == 200  # and a CSRF cookie
        csrf = client.cookies["csrftoken"]
        cookie = f"{settings.SESSION_COOKIE_NAME}={session}; csrftoken={csrf}".encode()
        host = f"127.0.0.1:{server.port}".encode()

        def send(method: bytes, target: bytes, body: bytes = b"", extra: bytes = b"") -> None:
            request = (
                method + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nCookie: " + cookie
                + b"\r\nX-CSRFToken: " + csrf.encode() + b"\r\nConnection: close\r\n" + extra
                + b"Content-Type: application/x-www-form-urlencoded\r\n"
                + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )  # fmt: skip
            status, head, answer = raw_request(server.port, request)
            assert_clean(status, answer, head.decode("latin-1").lower(), f"{method} {target[:60]}")

        sent = 0
        for fmt, names, name in routes():
            if name.startswith("admin:"):
                continue
            for value in RAW_HOSTILE:
                # Twisted drops a request line past 16 KiB unanswered: one long value at a time.
                params = QUERY_PARAMS if len(value) < 1000 else QUERY_PARAMS[:1]
                query = b"&".join(p.encode() + b"=" + value for p in params)
                valid = fill(fmt, names, None, {"slug": tenant.slug, "run_id": "1"}).encode()
                hx = b"HX-Request: true\r\nHX-Target: " + value[:100] + b"\r\n"
                send(b"GET", valid + b"?" + query, extra=hx)
                if names:
                    path = (fmt % dict.fromkeys(names, "\x01")).encode().replace(b"\x01", value)
                    send(b"GET", path)
                    send(b"POST", path, body=b"reason=" + value)
                if name not in ACT_WITHOUT_FIELDS | ACT_ON_ANY_TEXT:
                    form = b"&".join(f.encode() + b"=" + value for f in FORM_FIELDS)
                    send(b"POST", valid, body=form)
                sent += 1

        # A tenant's host, with a verify token that is not one.
        for token in (b"\xb2:x", b"\x00", b"\xff\xfe:\xff", b"1:" + b"a" * 5000, b":", b"x:"):
            request = (
                b"GET / HTTP/1.1\r\nHost: " + tenant.hostname.encode() + b"\r\nx-tenant-verify: "
                + token + b"\r\nConnection: close\r\n\r\n"
            )  # fmt: skip
            status, head, answer = raw_request(server.port, request)
            # The route is off and nothing listens behind it: a 502 or 503 from the proxy is
            # its answer for an unreachable tenant, a 500 would be the header crashing it.
            assert status != 500 and b"Traceback" not in answer, (token[:20], status)
        log = server.log_path.read_text(errors="replace")
    assert sent > 100
    assert "Traceback" not in log and "Internal Server Error" not in log
    assert model_rows() == before
