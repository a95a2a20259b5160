"""A browser opens a tenant's own URL, `http://<slug>-<org>.localhost:<port>/`."""

from __future__ import annotations

import pytest

from provisioning import actions
from provisioning.traffic import routing
from tests.browser_support import Daphne, free_port
from tests.conftest import drive
from tests.docker_support import require_docker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.docker]


def test_chromium_opens_the_tenants_subdomain_and_sees_its_page(
    chromium, plans, settings, tmp_path
):
    require_docker()
    port = free_port()
    settings.BASE_DOMAIN = f"localhost:{port}"  # as the daphne below is told
    settings.ROUTES_FILE = str(tmp_path / "nginx-tenants.conf")
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    routing.forget()
    server = Daphne(tmp_path, port)
    context = chromium.new_context()
    tenant = actions.create_tenant(
        slug="browse", org="demo", plan="pro", admin_email="a@example.com"
    )
    try:
        page = context.new_page()
        # Chromium resolves *.localhost to the loopback address by itself.
        response = page.goto(f"http://browse-demo.localhost:{port}/")
        assert response.status == 503
        assert "being provisioned" in page.content()

        assert drive(tenant) == "succeeded"
        page.wait_for_timeout(int(routing.CACHE_SECONDS * 1000) + 200)
        response = page.goto(tenant.url)
        assert response.status == 200
        assert page.title() == "browse-demo"
        assert page.get_by_role("heading").inner_text() == "Welcome to tenant browse-demo"
    finally:
        context.close()
        actions.decommission_tenant(tenant)
        drive(tenant)
        server.stop()
