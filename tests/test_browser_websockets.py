"""What a tab does when the console closes its socket for a reason (static/console.js)."""

import re
import time

import pytest
from django.contrib.auth.models import Group
from django.contrib.sessions.models import Session
from django.db import transaction
from playwright.sync_api import expect

from console.live import access
from provisioning.audit import announce
from tests.conftest import new_tenant

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def push(topics) -> None:
    """A committed change announced to ``topics``, once a check of the session is due."""
    time.sleep(access.CHECK_SECONDS)
    with transaction.atomic():
        announce(topics)


def test_a_signed_out_tab_goes_to_the_sign_in_page_at_the_next_push(operator, open_page):
    page = open_page(operator, "/audit/")
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
    Session.objects.all().delete()  # signed out everywhere (another tab, an admin)
    push(["audit"])
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=%2Faudit%2F$"))


def test_a_tab_whose_user_leaves_the_operators_reloads_as_a_viewer(
    operator, open_page, faults_enabled
):
    tenant = new_tenant("demoted", faults=["validate:permanent"])  # fails at once, makes nothing
    page = open_page(operator, "/tenants/demoted/")
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
    expect(page.locator("#actions")).not_to_contain_text("needs the operators group")
    operator.groups.remove(Group.objects.get(name="operators"))
    push([f"tenant-{tenant.pk}"])
    expect(page.locator("#actions")).to_contain_text("needs the operators group")
