"""Signing in and out; every page but /healthz and the login page needs a user."""

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_the_login_page_is_styled_and_public(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "console.css" in html and 'name="username"' in html and "csrfmiddlewaretoken" in html


def test_healthz_is_public(client):
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "/",
        "/tenants/new/",
        "/tenants/acme/",
        "/audit/",
        "/api/tenants/acme",
        "/api/provisioning/recent-failures",
    ],
)
def test_pages_send_anonymous_users_to_sign_in(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_signing_in_lands_on_the_tenants_list(client, operator):
    response = client.post(
        "/accounts/login/", {"username": "olivia", "password": "pw-" + "olivia" * 2}
    )
    assert response.status_code == 302 and response["Location"] == "/"
    page = client.get("/").content.decode()
    assert "olivia" in page and "role-chip--operator" in page


def test_a_wrong_password_is_said_inline(client, operator):
    response = client.post("/accounts/login/", {"username": "olivia", "password": "nope"})
    assert response.status_code == 200
    assert "form-errors" in response.content.decode()


def test_signing_out_is_a_post(client, operator):
    client.force_login(operator)
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get("/").status_code == 302
