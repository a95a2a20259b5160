"""The automation API and /metrics against a real daphne and real workers (qcluster).

What a billing platform or a CI pipeline would do: create a tenant with an
Idempotency-Key (twice), follow Location until it is active, cancel, retry and
decommission through the API, and meet every refusal; then scrape /metrics.
"""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from console.api.tokens import issue_token
from provisioning.models import AuditEvent
from tenants.models import Tenant
from tests.conftest import new_tenant

pytestmark = pytest.mark.cluster

BODY = {"slug": "acme", "org": "demo", "plan": "free", "admin_email": "ops@example.com"}


def follow(http: httpx.Client, location: str, state: str, timeout: float = 60) -> dict:
    """GET ``location`` until the tenant is in ``state``; its last status JSON."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(location)
        assert response.status_code == 200, response.text
        data = response.json()
        if data["state"] == state and not data["current_step"]:
            return data
        assert time.monotonic() < deadline, f"{location} still {data['state']}, not {state}"
        time.sleep(0.2)


def test_a_client_drives_tenants_through_the_api(console, operator, viewer, faults_enabled):
    token = issue_token(operator, "billing-signup")[1]
    auth = {"Authorization": f"Bearer {token}"}
    http = httpx.Client(base_url=console.url, headers=auth, trust_env=False, timeout=30)

    # Create with an Idempotency-Key, twice: one tenant, the same answer.
    key = {"Idempotency-Key": "signup-4711"}
    first = http.post("/api/v1/tenants", json=BODY, headers=key)
    again = http.post("/api/v1/tenants", json=BODY, headers=key)
    assert first.status_code == again.status_code == 202, first.text
    assert again.json() == first.json()
    assert first.headers["Location"] == again.headers["Location"] == "/api/v1/tenants/acme"
    assert Tenant.objects.filter(slug="acme").count() == 1

    active = follow(http, first.headers["Location"], "active")
    assert [s["status"] for s in active["steps"]] == ["succeeded"] * 9

    # Cancel one that is provisioning (it hangs in deploy_workloads), then retry it.
    new_tenant("beta", user=operator, faults=["deploy_workloads:hang:60"])
    follow_until = time.monotonic() + 30
    while http.get("/api/v1/tenants/beta").json()["current_step"] != "deploy_workloads":
        assert time.monotonic() < follow_until
        time.sleep(0.2)
    cancel = http.post("/api/v1/tenants/beta/cancel", json={"reason": "duplicate order"})
    assert cancel.status_code == 202, cancel.text
    failed = follow(http, "/api/v1/tenants/beta", "failed")
    assert failed["cancelled"] is True
    retry = http.post("/api/v1/tenants/beta/retry")
    assert retry.status_code == 202 and retry.json()["state"] == "provisioning"
    follow(http, "/api/v1/tenants/beta", "active")

    decommission = http.post("/api/v1/tenants/acme/decommission", json={"reason": "churned"})
    assert decommission.status_code == 202, decommission.text
    follow(http, "/api/v1/tenants/acme", "decommissioned")

    # Every refusal, with its code and JSON.
    viewer_auth = {"Authorization": f"Bearer {issue_token(viewer, 'dashboard')[1]}"}
    refusals = [
        (http.post("/api/v1/tenants", json={**BODY, "slug": "beta", "org": "-demo"}), 400),
        (
            http.post(
                "/api/v1/tenants",
                content=b'{"slug": ',
                headers={"Content-Type": "application/json"},
            ),
            400,
        ),  # noqa: E501
        (http.get("/api/v1/tenants", headers={"Authorization": ""}), 401),
        (http.get("/api/v1/tenants", headers={"Authorization": "Bearer tpc_forged"}), 401),
        (http.post("/api/v1/tenants/beta/cancel", headers=viewer_auth), 403),
        (http.post("/api/v1/tenants", json={**BODY, "slug": "gamma"}, headers=viewer_auth), 403),
        (http.get("/api/v1/tenants/nobody"), 404),
        (http.post("/api/v1/tenants/nobody/cancel"), 404),
        (http.post("/api/v1/tenants/beta/cancel"), 409),
        (http.post("/api/v1/tenants/beta/retry"), 409),
        (http.post("/api/v1/tenants/beta/reset"), 409),
        (http.post("/api/v1/tenants/acme/decommission"), 409),
        (http.post("/api/v1/tenants", json={**BODY, "slug": "other"}, headers=key), 409),
    ]
    for response, status in refusals:
        assert response.status_code == status, (response.request.url, response.text)
        body = response.json()
        if status == 400 and "errors" in body:
            assert body["errors"] and all(isinstance(v, list) for v in body["errors"].values())
        else:
            assert isinstance(body["error"], str) and body["error"], body
    assert refusals[0][0].json()["errors"] == {
        "slug": ["The slug 'beta' is taken by a tenant that is not decommissioned."],
        "org": ["The org cannot start or end with '-'."],
    }

    listed = http.get("/api/v1/tenants", params={"state": "active"}).json()
    assert [t["slug"] for t in listed["items"]] == ["beta"]
    via_api = AuditEvent.objects.filter(details__api_token="billing-signup")
    assert set(via_api.values_list("type", flat=True)) >= {
        "tenant.created",
        "tenant.provisioning.cancel_requested",
        "tenant.provisioning.retried",
        "tenant.decommission.started",
    }

    # /metrics from loopback, from the same daphne.
    scraped = httpx.get(console.url + "/metrics", trust_env=False)
    assert scraped.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }  # noqa: E501
    assert samples["tenants", (("state", "active"),)] == 1
    assert samples["tenants", (("state", "decommissioned"),)] == 1
    outcome = (("kind", "provision"), ("outcome", "cancelled"))
    assert samples["provisioning_runs_total", outcome] == 1
    assert samples["provisioning_runs_in_flight", ()] == 0
