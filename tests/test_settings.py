"""Settings fail loudly on a bad value, before anything starts."""

import pytest

from tests.conftest import manage


def check(**env):
    return manage("check", **env)


@pytest.mark.django_db
def test_production_mode_refuses_to_start_without_a_real_secret_key():
    done = check(DEBUG="0", SECRET_KEY="")
    assert done.returncode != 0
    assert "SECRET_KEY must be set to a random string of 32+ characters" in done.stderr
    assert check(DEBUG="0", SECRET_KEY="x" * 50, ALLOWED_HOSTS="console.example").returncode == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "env, message",
    [
        ({"DATABASE_URL": "mysql://root@localhost/x"}, "PostgreSQL only"),
        ({"DEBUG": "maybe"}, "DEBUG must be one of"),
        ({"WORKLOAD_DRIVER": "kubernetes"}, "WORKLOAD_DRIVER must be one of"),
        ({"Q_TIMEOUT": "2000", "Q_RETRY": "1000"}, "Q_TIMEOUT must be below Q_RETRY"),
        ({"EMAIL_PORT": "twenty-five"}, "EMAIL_PORT must be a whole number"),
        ({"SECURE_SSL_REDIRECT": "maybe"}, "SECURE_SSL_REDIRECT must be one of"),
        ({"SECURE_PROXY_SSL_HEADER": "https"}, "SECURE_PROXY_SSL_HEADER must be one of"),
        ({"SESSION_COOKIE_SECURE": "2"}, "SESSION_COOKIE_SECURE must be one of"),
        ({"CSRF_COOKIE_SECURE": "y"}, "CSRF_COOKIE_SECURE must be one of"),
        ({"SECURE_HSTS_SECONDS": "1 year"}, "SECURE_HSTS_SECONDS must be a whole number"),
        ({"SECURE_HSTS_SECONDS": "-1"}, "SECURE_HSTS_SECONDS must be at least 0"),
        ({"SECURE_HSTS_PRELOAD": "sure"}, "SECURE_HSTS_PRELOAD must be one of"),
        ({"AXES_FAILURE_LIMIT": "0"}, "AXES_FAILURE_LIMIT must be at least 1"),
        ({"AXES_COOLOFF_MINUTES": "15m"}, "AXES_COOLOFF_MINUTES must be a whole number"),
        ({"AXES_COOLOFF_MINUTES": "-5"}, "AXES_COOLOFF_MINUTES must be at least 0"),
        ({"CLIENT_IP_HEADER": "HTTP_X_REAL_IP"}, "CLIENT_IP_HEADER must be a header name"),
        ({"PASSWORD_RESET_ENABLED": "perhaps"}, "PASSWORD_RESET_ENABLED must be one of"),
        (
            {"WORKLOAD_ENGINE_OUTAGE_SECONDS": "0"},
            "WORKLOAD_ENGINE_OUTAGE_SECONDS must be a number above 0",
        ),
        (
            {"WORKLOAD_ENGINE_OUTAGE_SECONDS": "nan"},
            "WORKLOAD_ENGINE_OUTAGE_SECONDS must be a number above 0",
        ),
        (
            {"WORKLOAD_ENGINE_OUTAGE_SECONDS": "2m"},
            "WORKLOAD_ENGINE_OUTAGE_SECONDS must be a number",
        ),
        ({"WORKLOAD_PUBLISH_HOST": "localhost"}, "WORKLOAD_PUBLISH_HOST must be an IP address"),
        ({"WORKLOAD_DRIVER": "kubernetes"}, "WORKLOAD_DRIVER must be one of"),
        ({"WORKLOAD_REGISTRY": "http://registry:5000"}, "WORKLOAD_REGISTRY must be host:port"),
        (
            {"WORKLOAD_SWARM_CONSTRAINTS": "node.role==worker,anywhere"},
            "WORKLOAD_SWARM_CONSTRAINTS: 'anywhere' is not NAME==VALUE",
        ),
    ],
)
def test_a_bad_setting_stops_start_up_naming_the_variable(env, message):
    done = check(**env)
    assert done.returncode != 0
    assert message in done.stderr
