"""The tenants list: badges, current step, filters, and the "Last attempt failed" banner."""

import pytest
from django.urls import reverse

from tenants.filters import list_filters, list_query
from tests.views_support import activate, create, fail, start

pytestmark = pytest.mark.django_db


def get(client, user, **params):
    client.force_login(user)
    return client.get(reverse("tenant-list"), params)


def test_it_needs_a_signed_in_user(client, plans):
    response = client.get("/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_rows_show_state_badges_and_the_current_step(client, operator):
    create(operator, "alpha")
    start(create(operator, "bravo"), "seed_schema")
    activate(create(operator, "charlie"))
    fail(create(operator, "delta"))
    html = get(client, operator).content.decode()
    assert 'id="tenant-table"' in html and 'hx-swap-oob="morph"' in html
    assert 'ws-connect="/ws/tenants/"' in html
    assert "Step 5/9 · Apply tenant schema" in html
    assert "All 9 steps done" in html
    assert "Failed at step 6/9 · Deploy workloads" in html
    for state in ("provisioning", "active", "failed"):
        assert f"badge--{state}" in html
    # Newest first.
    assert html.index(">delta<") < html.index(">alpha<")


def test_it_filters_by_state_and_searches_slug_and_org(client, operator):
    create(operator, "alpha", org="north")
    activate(create(operator, "bravo", org="south"))
    html = get(client, operator, state="active").content.decode()
    assert ">bravo<" in html and ">alpha<" not in html
    assert 'ws-connect="/ws/tenants/?state=active"' in html
    html = get(client, operator, q="NORTH").content.decode()
    assert ">alpha<" in html and ">bravo<" not in html
    html = get(client, operator, q="zzz").content.decode()
    assert "No tenants match this filter." in html


def test_decommissioned_tenants_are_hidden_unless_asked_for(client, operator):
    from tenants.models import Tenant

    gone = create(operator, "alpha")
    Tenant.objects.filter(pk=gone.pk).update(state="decommissioned")
    create(operator, "bravo")
    html = get(client, operator).content.decode()
    assert ">bravo<" in html and ">alpha<" not in html
    for state in ("all", "decommissioned"):
        assert ">alpha<" in get(client, operator, state=state).content.decode()


def test_bad_filters_fall_back_to_defaults(client, operator):
    create(operator, "alpha")
    response = get(client, operator, state="exploded", q="x" * 500)
    assert response.status_code == 200
    assert ">alpha<" not in response.content.decode()  # q is kept (cut to 60), state dropped
    assert list_filters({"state": "exploded", "q": "  a   b "}) == {"state": "", "q": "a b"}
    assert list_filters({"state": ["failed"], "q": None}) == {"state": "failed", "q": ""}
    assert list_filters({"state": "ALL"}) == {"state": "all", "q": ""}
    assert list_filters({}) == {"state": "", "q": ""}
    assert len(list_filters({"q": "x" * 500})["q"]) == 60
    assert list_query({"state": "failed", "q": "a b"}) == "state=failed&q=a+b"


def test_viewers_see_no_new_tenant_button(client, operator, viewer):
    assert "New tenant" in get(client, operator).content.decode()
    assert "New tenant" not in get(client, viewer).content.decode()


def test_the_banner_shows_my_latest_failure(client, operator):
    fail(create(operator, "alpha"))
    html = get(client, operator).content.decode()
    assert 'id="failure-banner" class="banner banner--bad"' in html
    assert "Last attempt failed" in html and "Workload image missing" in html


def test_the_banner_ignores_other_users_failures_and_cancels(client, operator, plans):
    from tests.conftest import _user

    other = _user("otto", "operators")
    fail(create(other, "alpha"))
    fail(create(operator, "bravo"), cancelled=True)
    html = get(client, operator).content.decode()
    assert "Last attempt failed" not in html
    assert '<div id="failure-banner" hx-swap-oob="morph"></div>' in html


def test_the_banner_goes_once_the_tenant_was_retried(client, operator):
    tenant = create(operator, "alpha")
    fail(tenant)
    client.force_login(operator)
    client.post(reverse("tenant-retry", args=["alpha"]))
    assert "Last attempt failed" not in get(client, operator).content.decode()
