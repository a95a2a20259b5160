"""Settings, all from environment variables (see .env.example).

A bad value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from console.database import database_settings
from console.env import envbool, envchoice, envfloat, envint, kept_secret
from provisioning.drivers import DEFAULT_WORKLOAD_IMAGE, DRIVER_NAMES  # Django-free module

BASE_DIR = Path(__file__).resolve().parent.parent
# Under pytest: the test database, resource names and route table stay apart (below).
TESTING = "pytest" in sys.modules
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))

DEBUG = envbool("DEBUG", "1")
# No mode uses a key written in the source: it signs django-q2's pickled task
# payloads, the verify tokens and the sign-in links. Production sets it; in
# development a random key is made on first start and kept in VAR_DIR, which
# daphne, qcluster, commands and tests' subprocesses all share.
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not DEBUG and len(SECRET_KEY) < 32:
    raise ImproperlyConfigured(
        "SECRET_KEY must be set to a random string of 32+ characters when DEBUG=0"
    )
if not SECRET_KEY:
    SECRET_KEY = kept_secret(VAR_DIR / "secret-key")
if TESTING:
    # Subprocesses a test starts with a VAR_DIR of their own still sign alike.
    os.environ.setdefault("SECRET_KEY", SECRET_KEY)

# HTTPS. In production (DEBUG=0) the console sits behind a TLS edge that sets
# X-Forwarded-Proto; each of these can be turned off for a plain-HTTP internal
# deployment. Tenant hosts are answered before Django (console/asgi.py), so
# none of this reaches them.
_ON_IN_PRODUCTION = "0" if DEBUG else "1"
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", _ON_IN_PRODUCTION)
# A local health checker and metrics scraper speak plain HTTP to daphne.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https")
    if envbool("SECURE_PROXY_SSL_HEADER", _ON_IN_PRODUCTION)
    else None
)
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", _ON_IN_PRODUCTION)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", _ON_IN_PRODUCTION)
SECURE_HSTS_SECONDS = envint(
    "SECURE_HSTS_SECONDS", "0" if DEBUG else str(365 * 24 * 3600), minimum=0
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", "1")
# Preloading is a promise to browsers for the whole domain, tenant hosts
# included, that takes months to withdraw: an operator opts in on purpose, and
# until then check --deploy's reminder (W021) is silenced.
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "0")
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

BASE_DOMAIN = os.environ.get("BASE_DOMAIN", "localhost:8000")
SITE_URL = os.environ.get("SITE_URL", "http://localhost:8000")
# Tenant traffic (docs/TRAFFIC.md). ROUTES_FILE: the nginx route table an edge
# includes, rewritten on every route change ("" turns it off).
# TRAFFIC_VERIFY_URL: where mark_active checks the tenant's URL (the console or
# the edge, e.g. http://127.0.0.1:8000); unset, it checks in process.
if TESTING:
    # Tests (and the daphne/qcluster they start, which inherit the environment)
    # must not rewrite a dev console's table; the traffic tests set their own.
    os.environ.setdefault("ROUTES_FILE", "")
ROUTES_FILE = os.environ.get("ROUTES_FILE", str(VAR_DIR / "routes" / "nginx-tenants.conf"))
TRAFFIC_VERIFY_URL = os.environ.get("TRAFFIC_VERIFY_URL", "")
# Run after every rewrite of ROUTES_FILE, e.g. "nginx -s reload" (split like a
# shell would, not run by one; "" runs nothing).
ROUTES_RELOAD_COMMAND = os.environ.get("ROUTES_RELOAD_COMMAND", "")
# The largest request body the tenant proxy forwards (413 above it).
TENANT_MAX_BODY_BYTES = envint("TENANT_MAX_BODY_BYTES", str(10 * 1024 * 1024))
# How long a tenant's one-time sign-in link stays valid.
SIGNIN_TOKEN_HOURS = envfloat("SIGNIN_TOKEN_HOURS", "72")
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,.localhost,testserver").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    "axes",
    "tenants",
    # Before django_q: its `qcluster` command is provisioning's (a subclass that
    # tells a waiting pump when its cluster stops; see provisioning.engine).
    "provisioning",
    "django_q",
    "console",  # the web layer: its template tags, the API's tokens
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "console.middleware.refuse_nul_in_path",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a lockout into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = "console.wsgi.application"
ASGI_APPLICATION = "console.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.live",
            ],
        },
    }
]

# Persistent connections, except under pytest, where the test database must be
# droppable at the end (a kept connection in another thread would block it).
DB_CONN_MAX_AGE = envint("DB_CONN_MAX_AGE", "0" if TESTING else "60")
# A session idle inside a transaction for this long is ended by PostgreSQL
# (console/database.py says why); 0 turns it off.
DB_IDLE_IN_TRANSACTION_SECONDS = envfloat(
    "DB_IDLE_IN_TRANSACTION_SECONDS", "10", above=-1, maximum=86400
)
DATABASES = {
    "default": database_settings(
        os.environ.get("DATABASE_URL"), VAR_DIR, DB_CONN_MAX_AGE, DB_IDLE_IN_TRANSACTION_SECONDS
    )
}
if TESTING:
    # One test database per test session, so two sessions on one server
    # (a developer's and CI's, or parallel helpers) never drop each other's.
    DATABASES["default"]["TEST"] = {"NAME": f"test_console_{os.getpid()}"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# Sign-in throttling (django-axes): after AXES_FAILURE_LIMIT wrong passwords
# for one username from one address, that pair is refused for the cool-off
# (counted again from each refused try). Keyed on the pair, so an attacker
# cannot lock an operator out from elsewhere by guessing at their name.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses before a password is checked
    "django.contrib.auth.backends.ModelBackend",
]
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_FAILURE_LIMIT = envint("AXES_FAILURE_LIMIT", "5", minimum=1)
# 0: locked until an administrator runs `manage.py axes_reset_username NAME`.
AXES_COOLOFF_MINUTES = envint("AXES_COOLOFF_MINUTES", "15", minimum=0)
AXES_COOLOFF_TIME = timedelta(minutes=AXES_COOLOFF_MINUTES) if AXES_COOLOFF_MINUTES else None
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HANDLER = "console.signin_throttle.AxesHandler"
AXES_USERNAME_CALLABLE = "console.signin_throttle.client_username"
# The client's address is REMOTE_ADDR unless CLIENT_IP_HEADER names a header
# that the edge in front sets or appends to (X-Real-IP, X-Forwarded-For); its
# right-most address is the one the edge wrote, what a client sent sits left.
CLIENT_IP_HEADER = os.environ.get("CLIENT_IP_HEADER", "").strip()
if CLIENT_IP_HEADER and not re.fullmatch(r"[A-Za-z0-9-]+", CLIENT_IP_HEADER):
    raise ImproperlyConfigured(
        f"CLIENT_IP_HEADER must be a header name such as X-Real-IP, not {CLIENT_IP_HEADER!r}"
    )
AXES_IPWARE_META_PRECEDENCE_ORDER = (
    ("HTTP_" + CLIENT_IP_HEADER.upper().replace("-", "_"), "REMOTE_ADDR")
    if CLIENT_IP_HEADER
    else ("REMOTE_ADDR",)
)
AXES_IPWARE_PROXY_ORDER = "right-most"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Email: welcome emails go to files under var/ by default, so nothing leaves
# the machine unless SMTP is configured on purpose.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "provisioning.mail.EmailBackend")  # files 0600
EMAIL_FILE_PATH = os.environ.get("EMAIL_FILE_PATH", str(VAR_DIR / "emails"))
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", "25")
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", "0")
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Tenant Console <console@localhost>")
# Password reset mails a link, so its pages exist only where mail leaves the
# machine (the SMTP backend), unless turned on or off on purpose.
_SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
PASSWORD_RESET_ENABLED = envbool(
    "PASSWORD_RESET_ENABLED", "1" if EMAIL_BACKEND == _SMTP_BACKEND else "0"
)

# Workloads.
WORKLOAD_DRIVER = envchoice("WORKLOAD_DRIVER", "auto", DRIVER_NAMES)
WORKLOAD_IMAGE = os.environ.get("WORKLOAD_IMAGE", DEFAULT_WORKLOAD_IMAGE)
# Each tenant's Docker network gets its own small subnet from this pool (the
# engine's default pools run out after about 30 networks).
WORKLOAD_SUBNET_POOL = os.environ.get("WORKLOAD_SUBNET_POOL", "10.213.0.0/16")
WORKLOAD_SUBNET_PREFIX = envint("WORKLOAD_SUBNET_PREFIX", "27")
# The address the engine publishes replicas' ports on, where the proxy (or the
# edge) reaches them: loopback when they share a host, else an address of the
# engine's host that they can reach.
WORKLOAD_PUBLISH_HOST = os.environ.get("WORKLOAD_PUBLISH_HOST", "127.0.0.1")
try:
    ipaddress.ip_address(WORKLOAD_PUBLISH_HOST)
except ValueError:
    raise ImproperlyConfigured(
        f"WORKLOAD_PUBLISH_HOST must be an IP address, not {WORKLOAD_PUBLISH_HOST!r}"
    ) from None
# WORKLOAD_DRIVER=swarm: the registry every swarm node pulls the workload image
# from ("host:port"; the project pushes its image there when it lacks it).
# Empty: the nodes must already have the image (a one-node swarm).
WORKLOAD_REGISTRY = os.environ.get("WORKLOAD_REGISTRY", "").strip()
if WORKLOAD_REGISTRY and not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", WORKLOAD_REGISTRY):
    raise ImproperlyConfigured(f"WORKLOAD_REGISTRY must be host:port, not {WORKLOAD_REGISTRY!r}")
# WORKLOAD_DRIVER=swarm: placement constraints for tenants' services, comma
# separated, e.g. "node.labels.tenant-workloads==true,node.role==worker".
WORKLOAD_SWARM_CONSTRAINTS = [
    c.strip() for c in os.environ.get("WORKLOAD_SWARM_CONSTRAINTS", "").split(",") if c.strip()
]
for _constraint in WORKLOAD_SWARM_CONSTRAINTS:
    if not re.fullmatch(r"[A-Za-z0-9._/-]+\s*(==|!=)\s*[A-Za-z0-9._:/-]+", _constraint):
        raise ImproperlyConfigured(
            f"WORKLOAD_SWARM_CONSTRAINTS: {_constraint!r} is not NAME==VALUE or NAME!=VALUE"
        )
# How long a step (or its undo) keeps retrying while the Docker Engine is
# unreachable or restarting (errors.EngineOutage), instead of its attempts:
# a restart of dockerd takes seconds to a minute, far past a step's backoff.
WORKLOAD_ENGINE_OUTAGE_SECONDS = envfloat(
    "WORKLOAD_ENGINE_OUTAGE_SECONDS", "120", above=0, maximum=86400
)
# Prefix of every container, network and process name this installation
# creates (after "tpc-"); lower-case letters, digits and '-' only.
RESOURCE_NAMESPACE = os.environ.get("RESOURCE_NAMESPACE", "")
if not RESOURCE_NAMESPACE and TESTING:
    # Test databases start their ids at 1 again: keep test resources apart.
    RESOURCE_NAMESPACE = f"test{os.getpid()}-"
if RESOURCE_NAMESPACE and not all(c.isalnum() or c == "-" for c in RESOURCE_NAMESPACE):
    raise ImproperlyConfigured("RESOURCE_NAMESPACE may hold only letters, digits and '-'")

# The saga runner. A lease is held while a worker advances a run (not while
# the run is parked in a wait); a worker that dies stops renewing it and the
# reaper resumes the run once it expires.
PROVISIONING_LEASE_SECONDS = envfloat("PROVISIONING_LEASE_SECONDS", "15")
PROVISIONING_HEARTBEAT_SECONDS = envfloat("PROVISIONING_HEARTBEAT_SECONDS", "3")
PROVISIONING_BACKOFF_BASE = envfloat("PROVISIONING_BACKOFF_BASE", "0.25")
PROVISIONING_BACKOFF_MAX = envfloat("PROVISIONING_BACKOFF_MAX", "10")
PROVISIONING_FAULTS_ENABLED = envbool("PROVISIONING_FAULTS_ENABLED", "0")
# "noop": steps that do nothing (provisioning/steps/noop.py), for bench/engine.py only.
PROVISIONING_STEP_SET = envchoice("PROVISIONING_STEP_SET", "real", ("real", "noop"))
# Refused unless the process says it is a benchmark AND its database is a
# scratch one (bench/engine.py's bench_*, or a test database): a console
# running these would mark tenants active that have nothing behind them.
if PROVISIONING_STEP_SET == "noop" and not (
    envbool("BENCHMARK", "0") and str(DATABASES["default"]["NAME"]).startswith(("bench_", "test_"))
):
    raise ImproperlyConfigured(
        "PROVISIONING_STEP_SET=noop is for bench/engine.py only "
        "(BENCHMARK=1, on a scratch database named bench_*)"
    )
PROVISIONING_MAX_FAILED_ATTEMPTS = 3
# A task that advances runs (engine.pump) goes on claiming due runs and
# waiting for parked ones for at most this long (and half of Q_TIMEOUT), then
# hands over to a fresh task, so schedules get a worker in between.
PROVISIONING_PUMP_SECONDS = envfloat("PROVISIONING_PUMP_SECONDS", "300")
# A run that keeps breaking the worker (an unexpected exception, a crash) is
# resumed at most this many times, then fails and compensates like any failure.
PROVISIONING_MAX_RESUMES = envint("PROVISIONING_MAX_RESUMES", "5")
# Expected step durations come from the last N successful runs of a step on a
# plan (median and 95th percentile), once there are at least MIN samples;
# each process caches them for CACHE seconds.
PROVISIONING_EXPECTATION_WINDOW = envint("PROVISIONING_EXPECTATION_WINDOW", "50")
PROVISIONING_EXPECTATION_MIN_SAMPLES = envint("PROVISIONING_EXPECTATION_MIN_SAMPLES", "5")
PROVISIONING_EXPECTATION_CACHE_SECONDS = envfloat("PROVISIONING_EXPECTATION_CACHE_SECONDS", "30")
# Stall detection: a step is "stalled?" once it has run longer than
# max(p95 * FACTOR, FLOOR); readiness waits (wait_ready) use WAIT_FLOOR. The
# heartbeat of the worker holding a run, and the pumps for parked runs, check
# every PROVISIONING_HEARTBEAT_SECONDS.
PROVISIONING_STALL_FACTOR = envfloat("PROVISIONING_STALL_FACTOR", "3")
PROVISIONING_STALL_FLOOR_SECONDS = envfloat("PROVISIONING_STALL_FLOOR_SECONDS", "10")
PROVISIONING_STALL_WAIT_FLOOR_SECONDS = envfloat("PROVISIONING_STALL_WAIT_FLOOR_SECONDS", "30")

# django-q2. A task advances runs until they park or end (engine.pump), so
# `timeout` bounds the longest step call and PROVISIONING_PUMP_SECONDS. The
# ORM broker re-delivers a task not acknowledged within `retry` seconds;
# keeping timeout well below retry means a task that is still running is
# never delivered twice (the lease would refuse it anyway).
REDIS_URL = os.environ.get("REDIS_URL", "")
Q_CLUSTER = {
    # The namespace keeps a test run's queue apart from a console's on a shared Redis.
    "name": "console" + (f"-{RESOURCE_NAMESPACE.strip('-')}" if RESOURCE_NAMESPACE else ""),
    "workers": envint("Q_WORKERS", "2"),
    "timeout": envint("Q_TIMEOUT", "900"),
    "retry": envint("Q_RETRY", "1200"),
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "poll": 0.1,
    "save_limit": 500,
    "label": "Task queue",
    "sync": envbool("Q_SYNC", "0"),
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
if Q_CLUSTER["timeout"] >= Q_CLUSTER["retry"]:
    raise ImproperlyConfigured("Q_TIMEOUT must be below Q_RETRY, or running tasks are re-delivered")

# The automation API (/api/v1/, console/api/): requests per token, as
# "N/s", "N/min" or "N/hour" (django-ninja's throttling). Its counts live in a
# cache every console process shares: Redis with REDIS_URL, else a table in
# the database (made by console's migration 0001; `manage.py createcachetable`
# makes it again after a switch).
API_RATE_LIMIT = os.environ.get("API_RATE_LIMIT", "600/min")
if not re.fullmatch(r"[1-9][0-9]{0,6}/(s|sec|m|min|h|hour|d|day)", API_RATE_LIMIT):
    raise ImproperlyConfigured(
        f"API_RATE_LIMIT must look like 600/min (N/s, N/min, N/hour, N/day), not {API_RATE_LIMIT!r}"
    )
API_THROTTLE_TABLE = "console_api_throttle"
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "api": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "console-api",
        }
        if REDIS_URL
        else {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": API_THROTTLE_TABLE,
        }
    ),
}
# How long an Idempotency-Key's answer is kept (and the key refused for another body).
API_IDEMPOTENCY_HOURS = envfloat("API_IDEMPOTENCY_HOURS", "24", above=0, maximum=24 * 365)

# /metrics answers a scrape from loopback, or one that sends
# "Authorization: Bearer $METRICS_TOKEN"; anything else gets 403.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

CHANNEL_LAYERS = {}  # live updates fan out through PostgreSQL LISTEN/NOTIFY
# Every live socket gets a small heartbeat this often; a page that hears nothing
# for two intervals reconnects (a proxy can stop forwarding without closing).
LIVE_HEARTBEAT_SECONDS = envfloat("LIVE_HEARTBEAT_SECONDS", "15", above=0, maximum=3600)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"queue_chatter": {"()": "console.logfilters.QueueChatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # One handler, on the root logger: daphne configures the root logger before
    # Django starts, and a handler of our own on these loggers as well printed
    # each of their lines twice (dictConfig replaces the root's handlers).
    "root": {"handlers": ["stderr"], "level": "WARNING"},
    "loggers": {
        "provisioning": {"level": os.environ.get("LOG_LEVEL", "INFO")},
        "console": {"level": os.environ.get("LOG_LEVEL", "INFO")},
        # django-q2 logs as "django-q" and adds a handler of its own (printing
        # "[Q] INFO ...") unless this one is configured first.
        "django-q": {
            "handlers": ["stderr"],
            "level": "INFO",
            "filters": ["queue_chatter"],
            "propagate": False,
        },
    },
}
