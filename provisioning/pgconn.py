"""Parameters for a dedicated psycopg connection to Django's default database.

A LISTEN needs a connection of its own that Django does not manage: the
console's live hub and the engine's waiting pump each open one from these.
"""

from __future__ import annotations

from django.db import connections


def conninfo() -> dict:
    db = connections["default"].settings_dict
    params = {
        "dbname": db["NAME"],
        "user": db["USER"] or None,
        "password": db["PASSWORD"] or None,
        "host": db["HOST"] or None,
        "port": db["PORT"] or None,
        "application_name": "tenant-console-listener",
        "autocommit": True,
    }
    return {k: v for k, v in params.items() if v is not None}
