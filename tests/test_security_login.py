"""Sign-in throttling (django-axes) and the password-reset pages.

Real login POSTs through the test client: after 5 wrong passwords for one
username from one address, that pair is refused with a clear page.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest
from axes.models import AccessAttempt
from django.core import mail
from django.core.management import call_command
from django.urls import clear_url_caches
from django.utils import timezone

import console.urls
from tests.browser_support import Daphne
from tests.conftest import ROOT, run_python, subprocess_env

pytestmark = pytest.mark.django_db

PASSWORD = "pw-" + "olivia" * 2
HOME = "10.0.0.1"


def sign_in(client, password, *, username="olivia", address=HOME, **headers):
    return client.post(
        "/accounts/login/",
        {"username": username, "password": password},
        REMOTE_ADDR=address,
        **headers,
    )


def fail_five_times(client, *, username="olivia", address=HOME, **headers):
    responses = [
        sign_in(client, "wrong", username=username, address=address, **headers) for _ in range(5)
    ]
    assert [r.status_code for r in responses[:4]] == [200] * 4  # said inline, as before
    return responses[-1]


def is_signed_in(client) -> bool:
    return client.get("/").status_code == 200


def test_five_wrong_passwords_lock_that_user_at_that_address_with_a_message(client, operator):
    fifth = fail_five_times(client)
    assert fifth.status_code == 429
    page = fifth.content.decode()
    assert "Too many failed sign-ins for this account from this address." in page
    assert "Try again in 15 minutes" in page
    assert "manage.py axes_reset_username olivia" in page
    # Now even the right password is refused, and nobody is signed in.
    assert sign_in(client, PASSWORD).status_code == 429
    assert not is_signed_in(client)


@pytest.mark.django_db(transaction=True)  # daphne reads the committed user
def test_daphne_refuses_the_sixth_try_with_the_lockout_page(operator, tmp_path):
    server = Daphne(tmp_path)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", trust_env=False) as web:
            form = web.get("/accounts/login/").text
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)

            def post(password):
                data = {"username": "olivia", "password": password, "csrfmiddlewaretoken": token}
                return web.post("/accounts/login/", data=data)

            assert [post("wrong").status_code for _ in range(5)] == [200] * 4 + [429]
            refused = post(PASSWORD)
    finally:
        server.stop()
    assert refused.status_code == 429
    assert "Too many failed sign-ins for this account from this address." in refused.text
    assert "manage.py axes_reset_username olivia" in refused.text


def test_the_same_user_from_another_address_and_another_user_from_this_one_sign_in(
    client, operator, viewer
):
    fail_five_times(client)
    assert sign_in(client, "pw-" + "victor" * 2, username="victor").status_code == 302
    client.logout()
    assert sign_in(client, PASSWORD, address="10.0.0.2").status_code == 302
    assert is_signed_in(client)


def test_fewer_than_five_failures_are_forgotten_by_a_successful_sign_in(client, operator):
    for _ in range(4):
        sign_in(client, "wrong")
    assert sign_in(client, PASSWORD).status_code == 302
    client.logout()
    assert sign_in(client, "wrong").status_code == 200  # counting starts again


def test_after_the_cool_off_the_right_password_works_again(client, operator):
    fail_five_times(client)
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert sign_in(client, PASSWORD).status_code == 302


def test_ensure_admin_lifts_the_lockout_of_the_password_it_resets(client, plans, tmp_path):
    password_file = tmp_path / "admin-password"
    password_file.write_text("a-new-password\n")
    call_command("ensure_admin", "--username", "admin", "--password-file", str(password_file))
    fail_five_times(client, username="admin")
    assert sign_in(client, "a-new-password", username="admin").status_code == 429
    call_command("ensure_admin", "--username", "admin", "--password-file", str(password_file))
    assert sign_in(client, "a-new-password", username="admin").status_code == 302


def test_a_forwarded_for_header_is_not_believed_by_default(client, operator):
    # Each try claims another address; they all come from one connection.
    for n in range(5):
        response = sign_in(client, "wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    assert response.status_code == 429
    assert sign_in(client, PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.99").status_code == 429


def test_behind_an_edge_the_address_it_appended_is_the_clients(client, operator, settings):
    # What CLIENT_IP_HEADER=X-Forwarded-For sets (its parsing is checked below).
    settings.AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR")
    edge = "127.0.0.1"
    for n in range(5):  # what the client sent sits left of what the edge appended
        response = sign_in(
            client, "wrong", address=edge, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}, 198.51.100.7"
        )
    assert response.status_code == 429
    elsewhere = sign_in(client, PASSWORD, address=edge, HTTP_X_FORWARDED_FOR="203.0.113.5")
    assert elsewhere.status_code == 302


def test_client_ip_header_names_the_header_to_read():
    code = (
        "import json; from django.conf import settings"
        "; print(json.dumps(settings.AXES_IPWARE_META_PRECEDENCE_ORDER))"
    )
    orders = []
    for header in ("", "X-Real-IP"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=subprocess_env(CLIENT_IP_HEADER=header),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        orders.append(json.loads(done.stdout))
    assert orders == [["REMOTE_ADDR"], ["HTTP_X_REAL_IP", "REMOTE_ADDR"]]


@pytest.mark.parametrize("header", ["HTTP_USER_AGENT", "HTTP_ACCEPT"])
def test_a_nul_in_a_header_axes_keeps_is_throttled_like_any_other(client, operator, header):
    # PostgreSQL refuses a NUL in text; axes keeps these headers in its rows.
    fifth = fail_five_times(client, **{header: "probe\x00"})
    assert fifth.status_code == 429
    client.logout()
    AccessAttempt.objects.all().delete()
    assert sign_in(client, PASSWORD, **{header: "probe\x00"}).status_code == 302


# Password reset mails a link: its pages exist only where mail can be sent.


@pytest.fixture
def reset_pages(settings):
    """Reload the URLs with PASSWORD_RESET_ENABLED as given; as they were afterwards."""
    original = settings.PASSWORD_RESET_ENABLED

    def urls_with(enabled: bool):
        settings.PASSWORD_RESET_ENABLED = enabled
        importlib.reload(console.urls)  # the URLs are decided when they are loaded
        clear_url_caches()

    yield urls_with
    urls_with(original)


def test_password_reset_is_not_found_where_disabled(client, operator, reset_pages):
    reset_pages(False)
    assert client.get("/accounts/password_reset/").status_code == 404
    sent = client.post("/accounts/password_reset/", {"email": "olivia@example.com"})
    assert sent.status_code == 404 and mail.outbox == []
    assert client.get("/accounts/reset/done/").status_code == 404
    page = client.get("/accounts/login/").content.decode()
    assert "Forgot your password?" not in page
    assert 'name="password"' in page  # sign-in itself stays


def test_password_reset_works_where_enabled(client, operator, reset_pages):
    reset_pages(True)
    assert "Forgot your password?" in client.get("/accounts/login/").content.decode()
    assert client.get("/accounts/password_reset/").status_code == 200
    response = client.post("/accounts/password_reset/", {"email": "olivia@example.com"})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/password_reset/done/"
    assert len(mail.outbox) == 1 and "/accounts/reset/" in mail.outbox[0].body


@pytest.mark.parametrize(
    "env, enabled",
    [
        ({}, False),  # the file backend: nothing leaves the machine
        ({"EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend"}, True),
        (
            {
                "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                "PASSWORD_RESET_ENABLED": "0",
            },
            False,
        ),
        ({"PASSWORD_RESET_ENABLED": "1"}, True),
    ],
)
def test_password_reset_is_on_by_default_only_with_smtp(env, enabled):
    code = "from django.conf import settings; print(settings.PASSWORD_RESET_ENABLED)"
    done = run_python(
        ["-c", code], **{"EMAIL_BACKEND": None, "PASSWORD_RESET_ENABLED": None, **env}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(enabled)
