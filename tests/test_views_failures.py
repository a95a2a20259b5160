"""/api/provisioning/recent-failures and dismissing the "Last attempt failed" banner."""

from unittest import mock

import pytest
from django.db import OperationalError, connection
from django.urls import reverse

from provisioning.audit import CHANNEL
from provisioning.models import BannerDismissal
from tests.views_support import create, fail

API = "/api/provisioning/recent-failures"


def api(client, user, **params):
    client.force_login(user)
    response = client.get(API, params)
    assert response.status_code == 200
    return response.json()


@pytest.mark.django_db
def test_it_needs_a_signed_in_user(client, plans):
    assert client.get(API).status_code == 302


@pytest.mark.django_db
def test_it_returns_my_latest_failure(client, operator):
    fail(create(operator, "alpha"))
    fail(create(operator, "bravo"), "allocate_network", error="boom", category="database")
    body = api(client, operator, hours=24, limit=1)
    assert body["degraded"] is False
    assert (body["hours"], body["limit"]) == (24, 1)
    [failure] = body["failures"]
    assert failure["tenant"] == "bravo"
    assert failure["failed_step"] == "allocate_network" and failure["step_position"] == 4
    assert failure["category_title"] == "Database error"
    assert failure["url"] == "/tenants/bravo/" and failure["dismissed"] is False
    assert [f["tenant"] for f in api(client, operator, limit=5)["failures"]] == ["bravo", "alpha"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "hours", "limit"),
    [
        ({}, 24, 1),
        ({"hours": "1000", "limit": "500"}, 168, 20),
        ({"hours": "abc", "limit": "-2"}, 24, 1),
        ({"hours": "0", "limit": "0"}, 24, 1),
        ({"hours": "2.5", "limit": "1e3"}, 24, 1),
        ({"hours": "99999999999999999999", "limit": "3"}, 24, 3),
    ],
)
def test_hours_and_limit_are_capped_and_bad_values_mean_defaults(
    client, operator, params, hours, limit
):
    body = api(client, operator, **params)
    assert (body["hours"], body["limit"]) == (hours, limit)


@pytest.mark.django_db
def test_a_failing_query_degrades_instead_of_a_500(client, operator):
    fail(create(operator, "alpha"))
    with mock.patch(
        "provisioning.failures.failed_runs", side_effect=OperationalError("server closed")
    ):
        body = api(client, operator)
        page = client.get(reverse("tenant-list"))
    assert body == {"degraded": True, "hours": 24, "limit": 1, "failures": []}
    assert page.status_code == 200
    assert 'data-degraded="true"' in page.content.decode()


@pytest.mark.django_db
def test_dismissing_hides_the_banner_and_is_stored(client, operator):
    tenant = create(operator, "alpha")
    run = fail(tenant)
    client.force_login(operator)
    response = client.post(reverse("dismiss-failure", args=[run.pk]))
    assert response.status_code == 302
    assert BannerDismissal.objects.filter(user=operator, run=run).exists()
    assert "Last attempt failed" not in client.get(reverse("tenant-list")).content.decode()
    assert api(client, operator)["failures"][0]["dismissed"] is True


@pytest.mark.django_db
def test_dismissing_over_htmx_answers_with_the_empty_banner(client, operator):
    run = fail(create(operator, "alpha"))
    client.force_login(operator)
    url = reverse("dismiss-failure", args=[run.pk])
    response = client.post(url, headers={"HX-Request": "true"})
    assert (
        response.content.decode().strip() == '<div id="failure-banner" hx-swap-oob="morph"></div>'
    )


@pytest.mark.django_db
def test_nobody_dismisses_another_users_failure(client, operator, plans):
    from tests.conftest import _user

    run = fail(create(operator, "alpha"))
    other = _user("otto", "operators")
    client.force_login(other)
    assert client.post(reverse("dismiss-failure", args=[run.pk])).status_code == 404
    assert client.get(reverse("dismiss-failure", args=[run.pk])).status_code == 405
    assert not BannerDismissal.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_dismissing_tells_the_users_other_tabs(client, operator):
    import psycopg

    from tests.conftest import database_url

    run = fail(create(operator, "alpha"))
    listener = psycopg.connect(database_url(), autocommit=True)
    try:
        listener.execute(f"LISTEN {CHANNEL}")
        client.force_login(operator)
        client.post(reverse("dismiss-failure", args=[run.pk]))
        payloads = [n.payload for n in listener.notifies(timeout=0.5, stop_after=None)]
    finally:
        listener.close()
        connection.close()
    assert any(f'"user-{operator.pk}"' in p for p in payloads), payloads
