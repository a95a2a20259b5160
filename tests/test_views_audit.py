"""The audit feed: newest first, filtered by type prefix and tenant, paginated."""

import pytest
from django.urls import reverse

from console.presenters.audit import AUDIT_PAGE_SIZE
from provisioning.audit import record_event
from tenants.filters import audit_filters
from tests.views_support import create, fail

pytestmark = pytest.mark.django_db


def get(client, user, **params):
    client.force_login(user)
    return client.get(reverse("audit-feed"), params)


def test_it_lists_events_newest_first_with_a_live_region(client, operator, viewer):
    tenant = create(operator, "alpha")
    fail(tenant)
    response = get(client, viewer)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="audit-rows"' in html and 'ws-connect="/ws/audit/"' in html
    failed = html.index('"event-type">tenant.provisioning.failed<')
    assert failed < html.index('"event-type">tenant.created<')


@pytest.mark.parametrize(
    "prefix", ["tenant.provisioning.*", "tenant.provisioning.", "TENANT.provisioning"]
)
def test_it_filters_by_type_prefix(client, operator, prefix):
    fail(create(operator, "alpha"))
    html = get(client, operator, type=prefix).content.decode()
    assert "tenant.provisioning.failed" in html
    assert '<code class="event-type">tenant.created</code>' not in html


def test_it_filters_by_tenant(client, operator):
    create(operator, "alpha")
    create(operator, "bravo")
    html = get(client, operator, tenant="bravo").content.decode()
    assert 'href="/tenants/bravo/"' in html and 'href="/tenants/alpha/"' not in html
    assert 'ws-connect="/ws/audit/?tenant=bravo"' in html


def test_it_paginates_and_keeps_the_filter_in_page_links(client, operator):
    for n in range(AUDIT_PAGE_SIZE + 5):
        record_event("tenant.provisioning.step_started", details={"n": n})
    record_event("tenant.created", details={})
    html = get(client, operator, type="tenant.provisioning.").content.decode()
    assert "Page 1 of 2" in html
    assert 'href="?type=tenant.provisioning.&amp;page=2"' in html
    html = get(client, operator, type="tenant.provisioning.", page="2").content.decode()
    assert "Page 2 of 2" in html and html.count('<tr id="audit-') == 5


@pytest.mark.parametrize(
    "params",
    [
        {"page": "abc"},
        {"page": "-3"},
        {"page": "999999999999"},
        {"type": "<script>"},
        {"tenant": "A B"},
    ],
)
def test_bad_parameters_fall_back_to_defaults(client, operator, params):
    create(operator, "alpha")
    response = get(client, operator, **params)
    assert response.status_code == 200
    assert "tenant.created" in response.content.decode()


def test_audit_filters_parse_what_consumers_pass():
    assert audit_filters({"type": "tenant.provisioning.*", "tenant": "acme", "page": "3"}) == {
        "type_prefix": "tenant.provisioning.",
        "tenant": "acme",
        "page": 3,
    }
    assert audit_filters({"type": "x y", "tenant": "-" * 40, "page": "0"}) == {
        "type_prefix": "",
        "tenant": "",
        "page": 1,
    }
