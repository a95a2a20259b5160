"""The one-time sign-in link in the welcome email, from a real provisioning run.

The link is <SITE_URL>/signin/<nonce>/#<token>: the page is opened without the
fragment (browsers never send it) and its button POSTs the token, as
static/signin.js does.
"""

import email
import email.policy
import json
import logging
import os
import re
import stat
import threading
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.core.mail import send_mail
from django.db import connection
from django.test import Client
from django.urls import reverse

from provisioning import actions, diagnostics, signin
from provisioning.models import AuditEvent, StepLogLine, StepRun, TenantIdentity, WelcomeEmail
from tests.conftest import drive, new_tenant

pytestmark = pytest.mark.django_db(transaction=True)

LINK = re.compile(r"(\S+/signin/\S+)")


@pytest.fixture
def mail_dir(settings, tmp_path):
    """Emails go through the default backend, to files (pytest-django swaps in locmem)."""
    settings.EMAIL_BACKEND = "provisioning.mail.EmailBackend"
    settings.EMAIL_FILE_PATH = str(tmp_path / "emails")
    return tmp_path / "emails"


def read_emails(mail_dir) -> list[email.message.EmailMessage]:
    messages = []
    for path in sorted(mail_dir.iterdir()):
        for chunk in path.read_bytes().split(b"-" * 79 + b"\n"):
            if chunk.strip():
                messages.append(email.message_from_bytes(chunk, policy=email.policy.default))
    return messages


@pytest.fixture
def welcomed(plans, settings, mail_dir, caplog):
    """A tenant provisioned to active; its welcome emails are files in mail_dir."""
    settings.WORKLOAD_DRIVER = "process"
    caplog.set_level(logging.DEBUG)
    tenant = new_tenant()
    assert drive(tenant) == "succeeded"
    yield tenant
    actions.decommission_tenant(tenant)
    drive(tenant)


@pytest.fixture
def link(welcomed, mail_dir) -> str:
    (message,) = [
        m for m in read_emails(mail_dir) if m["Subject"].endswith("one-time sign-in link")
    ]
    (url,) = LINK.findall(message.get_content())
    return url


def split(url: str) -> tuple[str, str]:
    """(path, token) as the browser sees them: the fragment stays in the browser."""
    parts = urlsplit(url)
    return parts.path, parts.fragment


def identity_of(tenant) -> TenantIdentity:
    return TenantIdentity.objects.get(tenant=tenant)


def redeemed_events(tenant):
    return AuditEvent.objects.filter(tenant=tenant, type="tenant.signin.redeemed")


def test_the_welcome_link_points_at_the_consoles_page_not_the_workload(welcomed, link, settings):
    path, token = split(link)
    assert link.startswith(f"{settings.SITE_URL}/signin/")
    assert not link.startswith(welcomed.url)
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert path == reverse("signin", args=[identity_of(welcomed).token_nonce])


def test_the_welcome_link_signs_the_first_admin_in_once(welcomed, link, client):
    path, token = split(link)
    # Opening the page (as a mail scanner would) does not use the link up.
    for _ in range(2):
        page = client.get(path)
        assert page.status_code == 200
        html = page.content.decode()
        assert "Sign in as <strong>admin@example.com</strong>" in html
        assert "the first admin of\n    <strong>demo</strong>" in html
        assert page["Referrer-Policy"] == "same-origin"
        assert "no-store" in page["Cache-Control"]
    assert identity_of(welcomed).token_used_at is None

    response = client.post(path, {"token": token})
    assert response.status_code == 302 and response["Location"] == path
    done = client.get(path)
    assert done.status_code == 200
    assert "You are signed in as the first admin of demo" in done.content.decode()
    assert welcomed.url in done.content.decode()
    assert identity_of(welcomed).token_used_at is not None
    (event,) = redeemed_events(welcomed)
    assert event.details == {"organization": "demo", "admin_email": "admin@example.com"}


def test_a_second_use_is_refused_with_a_clear_page_and_changes_nothing(welcomed, link, client):
    path, token = split(link)
    assert client.post(path, {"token": token}).status_code == 302
    used_at = identity_of(welcomed).token_used_at

    for again in (Client(), client):
        response = again.post(path, {"token": token})
        assert response.status_code == 410
        assert "This sign-in link has already been used" in response.content.decode()
    # Someone else opening the link sees the same, not the signed-in page.
    assert Client().get(path).status_code == 410
    assert identity_of(welcomed).token_used_at == used_at
    assert redeemed_events(welcomed).count() == 1


def test_a_use_after_expiry_is_refused_with_a_clear_page_and_changes_nothing(
    welcomed, link, client, settings
):
    path, token = split(link)
    # The link was issued when its email was claimed for sending.
    sent = WelcomeEmail.objects.filter(tenant=welcomed, kind=signin.LINK_EMAIL)
    sent.update(claimed_at=sent.get().claimed_at - timedelta(hours=settings.SIGNIN_TOKEN_HOURS))

    page = client.get(path)
    assert page.status_code == 410
    assert "This sign-in link has expired" in page.content.decode()
    response = client.post(path, {"token": token})
    assert response.status_code == 410
    assert "This sign-in link has expired" in response.content.decode()
    assert identity_of(welcomed).token_used_at is None
    assert not redeemed_events(welcomed).exists()


def test_a_link_not_yet_expired_still_works(welcomed, link, client, settings):
    path, token = split(link)
    sent = WelcomeEmail.objects.filter(tenant=welcomed, kind=signin.LINK_EMAIL)
    sent.update(claimed_at=sent.get().claimed_at - timedelta(hours=settings.SIGNIN_TOKEN_HOURS - 1))
    assert client.post(path, {"token": token}).status_code == 302


# One provisioning run serves every case (a run takes seconds).
DAMAGED_TOKENS = [
    ("0" * 64, 403, "This sign-in link is not valid"),
    ("", 400, "This sign-in link is incomplete"),
    ("²" * 64, 400, "This sign-in link is incomplete"),
    ("\x00" * 64, 400, "This sign-in link is incomplete"),
    ("a" * 10_000, 400, "This sign-in link is incomplete"),
    ("' OR 1=1 --", 400, "This sign-in link is incomplete"),
]


def test_a_wrong_or_damaged_token_is_refused_and_changes_nothing(welcomed, link, client):
    path, token = split(link)
    for bad, status, title in [*DAMAGED_TOKENS, (token.upper(), 400, "incomplete")]:
        response = client.post(path, {"token": bad})
        assert response.status_code == status, bad[:20]
        assert title in response.content.decode()
    assert client.post(path).status_code == 400  # no token at all
    assert identity_of(welcomed).token_used_at is None
    assert not redeemed_events(welcomed).exists()


# A NUL in any path is refused before any view (console/middleware.py, the hostile-input tests).
@pytest.mark.parametrize("nonce", ["0" * 32, "²" * 32, "x" * 5000, "<script>", "' OR 1=1 --"])
def test_an_unknown_or_damaged_link_is_a_404_page(plans, client, nonce):
    for response in (
        client.get(f"/signin/{nonce}/"),
        client.post(f"/signin/{nonce}/", {"token": "0" * 64}),
    ):
        assert response.status_code == 404
        assert "This sign-in link is not valid" in response.content.decode()


def test_a_link_whose_email_was_never_sent_cannot_be_used(welcomed, link, client):
    path, token = split(link)
    WelcomeEmail.objects.filter(tenant=welcomed, kind=signin.LINK_EMAIL).delete()
    assert client.post(path, {"token": token}).status_code == 404
    assert identity_of(welcomed).token_used_at is None


def test_two_redemptions_at_once_sign_in_exactly_once(welcomed, link):
    path, token = split(link)
    nonce = path.strip("/").split("/")[-1]
    barrier = threading.Barrier(6)
    outcomes = []

    def use():
        barrier.wait()
        try:
            signin.redeem(nonce, token)
            outcomes.append("signed in")
        except signin.Refused as refused:
            outcomes.append(refused.reason.title)
        finally:
            connection.close()

    threads = [threading.Thread(target=use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["This sign-in link has already been used"] * 5 + ["signed in"]
    assert redeemed_events(welcomed).count() == 1


def test_the_token_is_in_no_log_line_event_page_or_bundle(welcomed, link, client, operator, caplog):
    path, token = split(link)
    client.get(path)
    client.post(path, {"token": token})
    client.get(path)
    Client().post(path, {"token": token})  # refused: its log lines too

    places = {
        "step log lines": [line.message for line in StepLogLine.objects.all()],
        "step outputs and errors": [
            json.dumps([s.outputs, s.error, s.progress]) for s in StepRun.objects.all()
        ],
        "audit events": [json.dumps(e.details) for e in AuditEvent.objects.all()],
        "diagnostics": [diagnostics.as_json(diagnostics.bundle(welcomed))],
        "log records": [r.getMessage() for r in caplog.records],
        "sign-in pages": [c.get(path).content.decode() for c in (client, Client())],
    }
    operator_client = Client()
    operator_client.force_login(operator)
    places["detail page"] = [
        operator_client.get(reverse("tenant-detail", args=[welcomed.slug])).content.decode()
    ]
    assert places["step log lines"] and places["log records"]
    for where, texts in places.items():
        assert not any(token in text for text in texts), where
    # Only its hash is stored.
    assert identity_of(welcomed).token_hash == signin.hash_token(token)


def test_the_welcome_email_files_are_0600_in_a_0700_directory(welcomed, mail_dir):
    assert stat.S_IMODE(mail_dir.stat().st_mode) == 0o700
    assert len(read_emails(mail_dir)) == 3
    for path in mail_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_an_email_file_is_0600_even_under_a_permissive_umask(settings, mail_dir):
    previous = os.umask(0o002)
    try:
        send_mail("s", "b", "from@example.com", ["to@example.com"])
    finally:
        os.umask(previous)
    (path,) = mail_dir.iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(mail_dir.stat().st_mode) == 0o700


def test_in_a_browser_the_link_signs_in_and_the_token_stays_out_of_the_access_log(
    plans, settings, mail_dir, tmp_path, chromium
):
    """The real page: static/signin.js reads the fragment, the button POSTs it, daphne logs."""
    from tests.browser_support import served_console

    settings.WORKLOAD_DRIVER = "process"
    with served_console(settings, tmp_path) as (server, _):
        settings.SITE_URL = server.url
        tenant = new_tenant()
        assert drive(tenant) == "succeeded"
        (url,) = [u for m in read_emails(mail_dir) for u in LINK.findall(m.get_content())]
        path, token = split(url)
        context = chromium.new_context()
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(url)
        page.get_by_text("Sign in as admin@example.com").first.wait_for()
        assert "#" not in page.url  # gone from the address bar and history
        page.get_by_role("button", name="Sign in as admin@example.com").click()
        page.get_by_text("You are signed in as the first admin of demo").wait_for()
        assert identity_of(tenant).token_used_at is not None

        page.goto(url)  # the same browser, again: still signed in, nothing used twice
        page.get_by_text("You are signed in as the first admin of demo").wait_for()
        other = chromium.new_context().new_page()
        other.goto(url)
        other.get_by_text("This sign-in link has already been used").wait_for()
        context.close()
        other.context.close()
    log = server.log_path.read_text()
    assert f"POST {path}" in log  # daphne's access log saw the redemption...
    assert token not in log  # ...and never the token
    actions.decommission_tenant(tenant)
    drive(tenant)
