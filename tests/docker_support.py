"""Docker Engine availability for tests.

Tests that need the engine call ``require_docker()`` first (or take the
``docker_driver`` fixture): without an engine they are skipped with the
reason, except under REQUIRE_DOCKER=1 (CI on a machine that has one), where
they fail instead, so a broken engine can never pass as "all skipped".

Other test modules reuse the fixture with
``from tests.docker_support import docker_driver  # noqa: F401``.
"""

from __future__ import annotations

import functools
import os

import pytest

from provisioning.drivers import docker_answers


@functools.cache
def _engine_status() -> tuple[bool, str]:
    return docker_answers()  # pinged once per test session


def require_docker() -> None:
    ok, reason = _engine_status()
    if ok:
        return
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    message = f"no Docker Engine answers at {where}: {reason}"
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"{message} (REQUIRE_DOCKER=1 forbids skipping)", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def docker_driver():
    """A fresh DockerDriver (not the per-process cached one), closed afterwards."""
    require_docker()
    from provisioning.drivers.docker_driver import DockerDriver

    driver = DockerDriver()
    yield driver
    driver.client.close()
