"""Production settings: HTTPS behind a TLS edge, and no key written in the source.

Each check starts the settings in a fresh process, with the environment a
deployment would give it.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_python, subprocess_env

pytestmark = pytest.mark.django_db  # the subprocesses are pointed at the test database

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(48)[:50],
    "ALLOWED_HOSTS": "console.example.com",
}


def python(code: str, *, umask: int = -1, **env) -> subprocess.CompletedProcess:
    return run_python(["-c", code], umask=umask, **env)


def production_settings(**env) -> dict:
    done = python(
        "import json; from django.conf import settings as s; print(json.dumps({n: getattr(s, n)"
        " for n in dir(s) if n.isupper() and n.startswith(('SECURE_', 'SESSION_', 'CSRF_'))},"
        " default=str))",
        **{**PRODUCTION, **env},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def deploy_check(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=subprocess_env(**{**PRODUCTION, **env}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_passes_the_deploy_check_with_https_on_by_default():
    done = deploy_check()
    assert done.returncode == 0, done.stdout + done.stderr
    settings = production_settings()
    assert settings["SECURE_SSL_REDIRECT"] is True
    assert settings["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert settings["SESSION_COOKIE_SECURE"] is True and settings["CSRF_COOKIE_SECURE"] is True
    assert settings["SECURE_HSTS_SECONDS"] == 31536000
    assert settings["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True


@pytest.mark.parametrize(
    "variable, check_id, off",
    [
        ("SECURE_SSL_REDIRECT", "security.W008", False),
        ("SECURE_HSTS_SECONDS", "security.W004", 0),
        ("SESSION_COOKIE_SECURE", "security.W012", False),
        ("CSRF_COOKIE_SECURE", "security.W016", False),
        ("SECURE_HSTS_INCLUDE_SUBDOMAINS", "security.W005", False),
        ("SECURE_PROXY_SSL_HEADER", None, None),  # no check for it: the setting says
    ],
)
def test_each_https_protection_turns_off_for_a_plain_http_deployment(variable, check_id, off):
    # The variable has the setting's name; the deploy check then names what is off.
    assert production_settings(**{variable: "0"})[variable] == off
    if check_id:
        done = deploy_check(**{variable: "0"})
        assert done.returncode != 0 and check_id in done.stderr


def test_development_stays_on_plain_http():
    settings = production_settings(DEBUG="1")
    assert settings["SECURE_SSL_REDIRECT"] is False
    assert settings["SECURE_PROXY_SSL_HEADER"] is None
    assert settings["SESSION_COOKIE_SECURE"] is False and settings["CSRF_COOKIE_SECURE"] is False
    assert settings["SECURE_HSTS_SECONDS"] == 0


PLAIN_HTTP_REQUESTS = """
import json, django
django.setup()
from django.test import Client, override_settings
# Static files are not collected here; the manifest storage would refuse the page.
plain = "django.contrib.staticfiles.storage.StaticFilesStorage"
override_settings(STORAGES={"staticfiles": {"BACKEND": plain}}).enable()
client = Client(HTTP_HOST="console.example.com")
login = client.get("/accounts/login/")
health = client.get("/healthz")
edge = client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
print(json.dumps({
    "login": [login.status_code, login.get("Location")],
    "healthz": health.status_code,
    "edge": [edge.status_code, edge.get("Strict-Transport-Security"),
             edge.cookies["csrftoken"]["secure"]],
}))
"""


def test_plain_http_is_redirected_except_healthz_and_the_edge_is_trusted():
    done = python(PLAIN_HTTP_REQUESTS, **PRODUCTION)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["login"] == [301, "https://console.example.com/accounts/login/"]
    assert seen["healthz"] == 200  # a local health checker speaks plain HTTP
    assert seen["edge"] == [200, "max-age=31536000; includeSubDomains", True]


def test_a_plain_http_deployment_serves_the_login_page_without_redirect():
    done = python(PLAIN_HTTP_REQUESTS, **PRODUCTION, SECURE_SSL_REDIRECT="0")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["login"] == [200, None]


PRINT_KEY = "from django.conf import settings; print(settings.SECRET_KEY)"


def test_without_a_secret_key_a_random_one_is_kept_0600_and_is_nowhere_in_the_source(tmp_path):
    var_dir = tmp_path / "var"
    # umask 0: the file's mode comes from how it is created, not from the umask.
    first = python(PRINT_KEY, umask=0, VAR_DIR=str(var_dir), DEBUG=None, SECRET_KEY=None)
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    kept = var_dir / "secret-key"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert kept.read_text().strip() == key and len(key) >= 50
    skip = ["--exclude-dir=.venv", "--exclude-dir=var", "--exclude-dir=.git"]
    found = subprocess.run(
        ["grep", "-rlF", *skip, "-e", key, "."],  # -e: a key may start with "-"
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 1 and found.stdout == ""  # 1: no match anywhere
    again = python(PRINT_KEY, VAR_DIR=str(var_dir), DEBUG=None, SECRET_KEY=None)
    assert again.stdout.strip() == key  # every later process shares it
    elsewhere = python(PRINT_KEY, VAR_DIR=str(tmp_path / "other"), DEBUG=None, SECRET_KEY=None)
    assert elsewhere.returncode == 0 and elsewhere.stdout.strip() != key  # made, not fixed


def test_processes_starting_at_once_agree_on_one_key(tmp_path):
    env = subprocess_env(VAR_DIR=str(tmp_path))
    env.pop("SECRET_KEY", None)
    env.pop("DEBUG", None)
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", PRINT_KEY],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(4)
    ]
    keys = {process.communicate(timeout=60)[0].strip() for process in starts}
    assert len(keys) == 1 and (tmp_path / "secret-key").read_text().strip() in keys
    assert [p.name for p in tmp_path.iterdir()] == ["secret-key"]  # no drafts left behind


def test_a_kept_key_others_can_read_is_refused(tmp_path):
    kept = tmp_path / "secret-key"
    kept.write_text(secrets.token_urlsafe(50))
    os.chmod(kept, 0o644)
    done = python(PRINT_KEY, VAR_DIR=str(tmp_path), DEBUG=None, SECRET_KEY=None)
    assert done.returncode != 0
    assert "secret-key is readable by others (mode 644); chmod 600 it" in done.stderr


def test_the_test_process_and_its_subprocesses_sign_with_one_key(settings):
    done = python(PRINT_KEY)
    assert done.stdout.strip() == settings.SECRET_KEY
