"""One rule per action: the page offers exactly what the action accepts.

For tenants in every state the console shows, each action's button is
enabled exactly when the action, called, succeeds; when it is greyed out it
says the words the action refuses with.
"""

from datetime import timedelta

import pytest
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from console.presenters.detail import actions_view
from provisioning import actions
from provisioning.models import ProvisioningRun
from tests.conftest import drive, new_tenant
from tests.views_support import activate, create, fail, run_of, start

pytestmark = pytest.mark.django_db

CALLS = {
    "cancel": lambda tenant, user: actions.request_cancel(tenant, user=user),
    "retry": lambda tenant, user: actions.retry_provisioning(tenant, user=user, force=True),
    "reset": lambda tenant, user: actions.reset_provisioning(tenant, user=user),
    "decommission": lambda tenant, user: actions.decommission_tenant(tenant, user=user),
}


def queued(tenant):
    return tenant


def running(tenant):
    start(tenant)
    return tenant


def worker_died(tenant):
    """Running, but its lease ran out long ago: the worker that held it is gone."""
    run = start(tenant)
    run.lease_expires_at = timezone.now() - timedelta(minutes=5)
    run.save(update_fields=["lease_expires_at"])
    return tenant


def parked(tenant):
    run = start(tenant)
    run.lease_owner, run.lease_expires_at = "", None
    run.wake_at, run.wait_reason = timezone.now() + timedelta(minutes=5), "readiness"
    run.save()
    return tenant


def cancelling(tenant):
    actions.request_cancel(start(tenant).tenant)
    return tenant


def failed(tenant):
    fail(tenant)
    return tenant


def failed_and_reset(tenant):
    fail(tenant)
    actions.reset_provisioning(tenant)
    return tenant


def active(tenant):
    activate(tenant)
    return tenant


def active_still_finishing(tenant):
    start(tenant, "send_welcome_emails")
    tenant.__class__.objects.filter(pk=tenant.pk).update(state="active")
    return tenant


def decommissioning(tenant):
    activate(tenant)
    actions.decommission_tenant(tenant)
    return tenant


SCENARIOS = [
    queued,
    running,
    worker_died,
    parked,
    cancelling,
    failed,
    failed_and_reset,
    active,
    active_still_finishing,
    decommissioning,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_each_button_is_enabled_exactly_when_its_action_succeeds(scenario, operator):
    tenant = scenario(create(operator))
    tenant.refresh_from_db()
    allowed = actions.allowed_actions(tenant)
    for name, call in CALLS.items():
        ok, why = allowed[name]
        try:
            with transaction.atomic():
                call(tenant, operator)
                transaction.set_rollback(True)
        except actions.ActionError as refused:
            assert not ok, f"{scenario.__name__}: {name} is offered but refused: {refused}"
            assert why == str(refused)
        else:
            assert ok, f"{scenario.__name__}: {name} is accepted but greyed out: {why}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_the_page_shows_no_enabled_button_the_action_would_refuse(scenario, operator):
    tenant = scenario(create(operator))
    tenant.refresh_from_db()
    allowed = actions.allowed_actions(tenant)
    for item in actions_view(tenant, "operator", actions.latest_run(tenant))["items"]:
        assert item["allowed"] == allowed[item["name"]][0]
        assert item["reason"] == allowed[item["name"]][1]


def test_reset_of_a_run_whose_worker_died_is_offered_and_works(client, operator):
    tenant = worker_died(create(operator))
    client.force_login(operator)
    page = client.get(reverse("tenant-detail", args=[tenant.slug])).content.decode()
    assert 'id="dialog-reset"' in page
    response = client.post(reverse("tenant-reset", args=[tenant.slug]), {"reason": "worker gone"})
    assert response.status_code == 302
    run = run_of(tenant)
    assert run.status == ProvisioningRun.Status.COMPENSATING and run.reset_at is not None
    assert drive(tenant) == "failed"  # the next worker undoes what it made
    tenant.refresh_from_db()
    assert tenant.state == "failed"


def test_reset_is_refused_for_a_run_no_worker_has_claimed_yet(plans):
    """Found by tests/test_fuzz_operations.py: a reset just after a create ended the
    new run failed before any worker saw it."""
    tenant = queued(new_tenant())
    with pytest.raises(actions.ActionError, match="queued and a worker will start it"):
        actions.reset_provisioning(tenant)
    run = run_of(tenant)
    tenant.refresh_from_db()
    assert run.status == "queued" and run.reset_at is None and tenant.state == "provisioning"
    # Unclaimed for longer than the reaper allows, its task was lost: reset may end it.
    ProvisioningRun.objects.filter(pk=run.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    actions.reset_provisioning(tenant)
    assert run_of(tenant).status == "compensating"
    assert drive(tenant) == "failed"


def test_reset_is_not_shown_while_a_worker_holds_the_run(client, operator):
    tenant = running(create(operator))
    client.force_login(operator)
    page = client.get(reverse("tenant-detail", args=[tenant.slug])).content.decode()
    assert 'id="dialog-cancel"' in page
    assert "dialog-reset" not in page and ">Reset<" not in page
