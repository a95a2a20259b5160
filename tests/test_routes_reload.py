"""ROUTES_RELOAD_COMMAND: run after every rewrite of the route table, never failing the change."""

from __future__ import annotations

import logging
import sys

import pytest

from provisioning.models import Route
from provisioning.traffic import export
from tests.views_support import activate, create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def routes(settings, tmp_path):
    settings.ROUTES_FILE = str(tmp_path / "routes.conf")
    return tmp_path


def test_the_command_runs_after_the_table_is_written(routes, settings, operator):
    marker = routes / "reloaded"
    # It sees the new table: it copies the file that was just written.
    settings.ROUTES_RELOAD_COMMAND = (
        f"{sys.executable} -c \"import shutil; shutil.copy('{routes / 'routes.conf'}', "
        f"'{marker}')\""
    )
    tenant = create(operator)
    activate(tenant)
    Route.objects.create(
        tenant=tenant, hostname="acme-demo.example.com", backends=["127.0.0.1:4000"], enabled=True
    )
    assert "acme-demo.example.com tenant_" in marker.read_text()


@pytest.mark.parametrize("command", ["false", "/nonexistent/nginx -s reload", "'unbalanced"])
def test_a_failing_command_is_logged_and_the_table_still_written(routes, settings, caplog, command):
    settings.ROUTES_RELOAD_COMMAND = command
    with caplog.at_level(logging.ERROR, logger="provisioning.traffic"):
        assert export.write_routes_file() == routes / "routes.conf"
    assert (routes / "routes.conf").exists()
    assert any("ROUTES_RELOAD_COMMAND" in r.getMessage() for r in caplog.records)


def test_without_a_command_nothing_runs(routes, settings, monkeypatch):
    settings.ROUTES_RELOAD_COMMAND = ""
    monkeypatch.setattr(export.subprocess, "run", lambda *a, **k: pytest.fail("ran something"))
    assert export.write_routes_file() is not None
