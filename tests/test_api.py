"""The automation API (/api/v1/) in process: tokens, roles, refusals, idempotency, limits.

The same requests against a real daphne and real workers are in
tests/test_api_daphne.py; here each rule is checked quickly and exactly.
"""

from __future__ import annotations

import json
from io import StringIO
from urllib.parse import quote

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from console.api.tokens import issue_token
from console.models import ApiToken, IdempotentRequest
from provisioning.models import AuditEvent
from tenants.models import Tenant
from tenants.validation import is_label
from tests.test_hostile_input import HOSTILE
from tests.views_support import activate, create, fail, start

BODY = {"slug": "acme", "org": "demo", "plan": "free", "admin_email": "ops@example.com"}


def call(token: str | None, method: str, path: str, body=None, **headers):
    """One request with ``token`` as its bearer; ``body``: JSON-encoded unless bytes."""
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else (json.dumps(body) if body is not None else "")
    client = Client()
    send = getattr(client, method.lower())
    if method == "GET":
        return send(path, headers=headers)
    return send(path, data=data, content_type="application/json", headers=headers)


@pytest.fixture
def operator_token(operator, task_queue):
    return issue_token(operator, "billing-signup")[1]


@pytest.fixture
def viewer_token(viewer):
    return issue_token(viewer, "dashboard")[1]


def test_create_answers_202_with_the_status_json_and_location(operator_token, operator):
    response = call(operator_token, "POST", "/api/v1/tenants", BODY)
    assert response.status_code == 202, response.content
    assert response["Location"] == "/api/v1/tenants/acme"
    data = response.json()
    assert data["slug"] == "acme" and data["state"] == "provisioning"
    assert [s["id"] for s in data["steps"]][:2] == ["validate", "allocate_storage"]
    tenant = Tenant.objects.get(slug="acme")
    assert tenant.created_by == operator
    created = AuditEvent.objects.get(type="tenant.created", tenant=tenant)
    assert created.actor == operator.username
    assert created.details["api_token"] == "billing-signup"


def test_the_audit_feed_says_which_token_acted(operator_token, operator):
    call(operator_token, "POST", "/api/v1/tenants", BODY)
    client = Client()
    client.force_login(operator)
    page = client.get("/audit/")
    assert b"Created acme-demo on plan free (through API token billing-signup)" in page.content


def test_the_token_records_its_last_use(operator_token):
    token = ApiToken.objects.get()
    assert token.last_used_at is None
    assert call(operator_token, "GET", "/api/v1/tenants").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_the_same_idempotency_key_and_body_give_the_same_answer_and_one_tenant(operator_token):
    first = call(operator_token, "POST", "/api/v1/tenants", BODY, **{"Idempotency-Key": "k-1"})
    again = call(operator_token, "POST", "/api/v1/tenants", BODY, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again["Location"] == first["Location"]
    assert again["Idempotent-Replayed"] == "true"
    assert Tenant.objects.count() == 1
    assert AuditEvent.objects.filter(type="tenant.created").count() == 1


def test_the_same_key_with_another_body_is_409_and_changes_nothing(operator_token):
    call(operator_token, "POST", "/api/v1/tenants", BODY, **{"Idempotency-Key": "k-2"})
    other = {**BODY, "slug": "other"}
    response = call(operator_token, "POST", "/api/v1/tenants", other, **{"Idempotency-Key": "k-2"})
    assert response.status_code == 409
    assert "different request" in response.json()["error"]
    assert list(Tenant.objects.values_list("slug", flat=True)) == ["acme"]


def test_a_refusal_is_replayed_under_its_key_too(operator_token):
    bad = {**BODY, "slug": "A"}
    first = call(operator_token, "POST", "/api/v1/tenants", bad, **{"Idempotency-Key": "k-3"})
    again = call(operator_token, "POST", "/api/v1/tenants", bad, **{"Idempotency-Key": "k-3"})
    assert first.status_code == again.status_code == 400
    assert again.json() == first.json()


def test_a_key_belongs_to_its_token(operator_token, operator):
    other_token = issue_token(operator, "crm")[1]
    call(operator_token, "POST", "/api/v1/tenants", BODY, **{"Idempotency-Key": "shared"})
    second = {**BODY, "slug": "beta"}
    response = call(other_token, "POST", "/api/v1/tenants", second, **{"Idempotency-Key": "shared"})
    assert response.status_code == 202
    assert IdempotentRequest.objects.count() == 2


def test_validation_errors_are_400_by_field(operator_token):
    body = {"slug": "Acme", "org": "", "plan": "gold", "admin_email": "nope"}
    response = call(operator_token, "POST", "/api/v1/tenants", body)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors["slug"] == ["The slug must be lower-case: use 'acme'."]
    assert errors["org"] == ["Enter a org."]
    assert errors["plan"][0].startswith("Unknown plan 'gold'")
    assert errors["admin_email"] == ["'nope' is not a valid email address."]
    assert not Tenant.objects.exists()


def test_a_field_of_the_wrong_type_is_400_by_field(operator_token):
    response = call(operator_token, "POST", "/api/v1/tenants", {**BODY, "slug": 7})
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["slug"]


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b'{"slug": "acme",}'])
def test_malformed_json_is_400(operator_token, body):
    response = call(operator_token, "POST", "/api/v1/tenants", body)
    assert response.status_code == 400
    assert response.json() == {"error": "The body is not valid JSON."}
    assert not Tenant.objects.exists()


@pytest.mark.parametrize("header", [None, "Bearer nope", "Bearer ", "Basic abc", "Bearer tpc_\x7f"])
def test_no_token_or_a_bad_one_is_401(plans, header):
    headers = {"Authorization": header} if header is not None else {}
    response = Client().get("/api/v1/tenants", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert "error" in response.json()


def test_a_revoked_token_is_401(operator_token):
    ApiToken.objects.update(revoked_at="2026-01-01T00:00:00Z")
    assert call(operator_token, "GET", "/api/v1/tenants").status_code == 401


def test_a_viewer_reads_but_may_not_act(viewer_token, operator):
    tenant = create(operator)
    assert call(viewer_token, "GET", "/api/v1/tenants/acme").status_code == 200
    response = call(viewer_token, "POST", "/api/v1/tenants", {**BODY, "slug": "beta"})
    assert response.status_code == 403
    assert response.json() == {"error": "Only operators may create tenants."}
    response = call(viewer_token, "POST", "/api/v1/tenants/acme/cancel")
    assert response.status_code == 403
    assert response.json() == {"error": "Only operators may change tenants."}
    assert not actions_recorded(tenant, "tenant.provisioning.cancel_requested")


def actions_recorded(tenant, type_):
    return AuditEvent.objects.filter(tenant=tenant, type=type_).exists()


def test_an_unknown_endpoint_is_a_json_404(operator_token):
    response = call(operator_token, "GET", "/api/v1/tenants/acme/logs")
    assert response.status_code == 404
    assert "openapi.json" in response.json()["error"]


def test_an_unknown_tenant_is_404(operator_token):
    for method, path in [
        ("GET", "/api/v1/tenants/nobody"),
        ("POST", "/api/v1/tenants/nobody/retry"),
    ]:
        response = call(operator_token, method, path)
        assert response.status_code == 404
        assert response.json() == {"error": "No tenant with that slug."}


def test_cancel_takes_a_reason_and_records_the_token(operator_token, operator):
    tenant = create(operator)
    start(tenant)
    response = call(operator_token, "POST", "/api/v1/tenants/acme/cancel", {"reason": "dup order"})
    assert response.status_code == 202
    event = AuditEvent.objects.get(tenant=tenant, type="tenant.provisioning.cancel_requested")
    assert event.details["reason"] == "dup order"
    assert event.details["api_token"] == "billing-signup"


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("cancel", "acme is active: only a tenant that is provisioning can be cancelled"),
        ("retry", "acme is active: only a failed tenant can be retried"),
        ("reset", "acme is active: only a failed tenant can be reset"),
    ],
)
def test_an_action_in_the_wrong_state_is_409_with_the_consoles_words(
    operator_token, operator, action, message
):
    activate(create(operator))
    response = call(operator_token, "POST", f"/api/v1/tenants/acme/{action}")
    assert response.status_code == 409
    assert response.json() == {"error": message}


def test_decommission_while_provisioning_and_repair_of_a_failed_tenant_are_409(
    operator_token, operator
):
    start(create(operator))
    response = call(operator_token, "POST", "/api/v1/tenants/acme/decommission")
    assert response.status_code == 409
    assert "cancel it first" in response.json()["error"]
    fail(create(operator, slug="beta"))
    response = call(operator_token, "POST", "/api/v1/tenants/beta/repair", {"reason": "x"})
    assert response.status_code == 409 and response.json()["error"]


def test_retry_past_the_limit_needs_force(operator_token, operator, settings):
    settings.PROVISIONING_MAX_FAILED_ATTEMPTS = 1
    fail(create(operator))
    response = call(operator_token, "POST", "/api/v1/tenants/acme/retry")
    assert response.status_code == 409 and "--force" in response.json()["error"]
    response = call(operator_token, "POST", "/api/v1/tenants/acme/retry", {"force": True})
    assert response.status_code == 202
    assert response.json()["state"] == "provisioning"


@pytest.mark.parametrize("reason", ["x" * 501, "a\x00b", "line\nforged"])
def test_a_reason_the_log_cannot_keep_is_400(operator_token, operator, reason):
    fail(create(operator))
    response = call(operator_token, "POST", "/api/v1/tenants/acme/reset", {"reason": reason})
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["reason"]
    assert not actions_recorded(Tenant.objects.get(), "tenant.provisioning.reset")


def test_the_list_filters_by_state_and_pages(operator_token, operator):
    for n in range(3):
        activate(create(operator, slug=f"act-{n}"))
    create(operator, slug="fresh")
    response = call(operator_token, "GET", "/api/v1/tenants?state=active&page_size=2")
    data = response.json()
    assert response.status_code == 200
    assert data["count"] == 3
    assert len(data["items"]) == 2 and {i["state"] for i in data["items"]} == {"active"}
    rest = call(operator_token, "GET", "/api/v1/tenants?state=active&page_size=2&page=2").json()
    assert len(rest["items"]) == 1
    everything = call(operator_token, "GET", "/api/v1/tenants").json()
    assert everything["count"] == 4
    assert everything["items"][0]["slug"] == "fresh"  # newest first
    assert set(everything["items"][0]) == {
        "slug", "org", "plan", "state", "url", "created_at", "activated_at",
    }  # fmt: skip


@pytest.mark.parametrize("query", ["state=sleeping", "page=0", "page=x", "page=%C2%B2"])
def test_a_bad_list_query_is_400(operator_token, query):
    response = call(operator_token, "GET", f"/api/v1/tenants?{query}")
    assert response.status_code == 400
    assert "errors" in response.json()


def test_requests_are_limited_per_token(operator_token, operator, settings):
    settings.API_RATE_LIMIT = "3/min"
    other = issue_token(operator, "other")[1]
    codes = [call(operator_token, "GET", "/api/v1/tenants").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert call(other, "GET", "/api/v1/tenants").status_code == 200  # its own count


def test_the_schema_is_served_and_names_every_operation(plans):
    response = Client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    actions = ("cancel", "retry", "reset", "decommission", "repair")
    assert set(paths) >= {
        "/api/v1/tenants",
        "/api/v1/tenants/{slug}",
        *(f"/api/v1/tenants/{{slug}}/{action}" for action in actions),
    }
    assert response.json()["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    create = paths["/api/v1/tenants"]["post"]
    assert "Idempotency-Key" in [p["name"] for p in create["parameters"]]


def test_create_api_token_prints_the_token_once_as_its_last_word(operator):
    out, err = StringIO(), StringIO()
    call_command("create_api_token", operator.username, "--name", "ci", stdout=out, stderr=err)
    raw = out.getvalue().split()[-1]
    token = ApiToken.objects.get()
    assert token.name == "ci" and token.user == operator
    assert raw not in (token.digest, token.prefix) and raw.startswith(token.prefix)
    assert call(raw, "GET", "/api/v1/tenants").status_code == 200


@pytest.mark.parametrize(
    "args", [["nobody"], ["olivia", "--name", "a\x00"], ["olivia", "--name", "x" * 81], ["\x00"]]
)
def test_create_api_token_refuses_what_it_cannot_use(operator, args):
    with pytest.raises(CommandError):
        call_command("create_api_token", *args, stdout=StringIO(), stderr=StringIO())
    assert not ApiToken.objects.exists()


def test_hostile_values_anywhere_get_a_clear_answer_and_change_nothing(operator_token, operator):
    activate(create(operator, slug="globex"))
    before = (Tenant.objects.count(), AuditEvent.objects.count())
    for value in HOSTILE:
        answers = [
            *(
                call(operator_token, "POST", "/api/v1/tenants", {**BODY, field: value})
                for field in BODY
                if not (field in ("slug", "org") and is_label(value.strip()))  # digits are fine
            ),
            call(operator_token, "POST", "/api/v1/tenants", {**BODY, "slug": {"x": [value]}}),
            call(operator_token, "GET", f"/api/v1/tenants/{quote(value, safe='')}"),
            call(operator_token, "GET", f"/api/v1/tenants/{quote(value)}"),
            call(operator_token, "POST", f"/api/v1/tenants/{quote(value, safe='')}/retry"),
            call(operator_token, "POST", "/api/v1/tenants/globex/retry", {"reason": value}),
            call(operator_token, "POST", "/api/v1/tenants/globex/retry", {"force": value}),
            call(operator_token, "GET", f"/api/v1/tenants?state={quote(value)}&page=1"),
            call(operator_token, "GET", f"/api/v1/tenants?page={quote(value)}"),
            call(operator_token, "GET", f"/api/v1/tenants?page_size={quote(value)}"),
            call(None, "GET", "/api/v1/tenants", Authorization=f"Bearer {value}"),
            call(operator_token, "POST", "/api/v1/tenants/globex/cancel",
                 **{"Idempotency-Key": value.encode("utf-8").decode("latin-1")}),
        ]  # fmt: skip
        for response in answers:
            assert response.status_code < 500, (value[:20], response.content[:200])
            if response.content == b"Bad request: the URL contains a NUL byte.":
                continue  # console.middleware answers a NUL in any path, before any view
            assert response["Content-Type"].startswith("application/json"), response.content[:200]
            body = response.json()
            assert body.get("error") or body.get("errors") or "items" in body or "slug" in body
    assert (Tenant.objects.count(), AuditEvent.objects.count()) == before


def test_the_admin_lists_tokens_and_revokes_them(operator_token, admin_client):
    token = ApiToken.objects.get()
    listing = admin_client.get("/admin/console/apitoken/")
    assert listing.status_code == 200
    assert token.prefix.encode() in listing.content and b"billing-signup" in listing.content
    assert token.digest.encode() not in listing.content
    response = admin_client.post(
        "/admin/console/apitoken/",
        {"action": "revoke", "_selected_action": [token.pk]},
        follow=True,
    )
    assert response.status_code == 200
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert call(operator_token, "GET", "/api/v1/tenants").status_code == 401
    assert admin_client.get("/admin/console/apitoken/add/").status_code == 403
