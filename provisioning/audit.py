"""Audit events and the announcement that something changed.

``record_event`` is called by actions and by the engine's ledger inside their
transactions. It writes the append-only event and calls ``pg_notify`` in the
same transaction, so PostgreSQL announces the change only if it commits: a
rolled-back change is never announced and a committed one always is.
"""

from __future__ import annotations

import contextvars
import json
from contextlib import contextmanager

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.utils import timezone

from provisioning.models import AuditEvent, ProvisioningRun
from tenants.models import Tenant

CHANNEL = "console"

# The API token a request acts through, set by the automation API around the
# one action it calls: every event that action records carries the token's
# name, whichever function below the action writes it.
_api_token: contextvars.ContextVar[str | None] = contextvars.ContextVar("api_token", default=None)


@contextmanager
def acting_through_token(name: str):
    """Events recorded inside carry ``details["api_token"] = name``."""
    reset = _api_token.set(name)
    try:
        yield
    finally:
        _api_token.reset(reset)


def actor_name(user) -> str:
    if user is None:
        return "system"
    return user.get_username() or f"user-{user.pk}"


def notify_sql(seq: str) -> str:
    """The SQL that announces a change: ``pg_notify`` of ``{"topics": [...], "seq": N}``
    on CHANNEL, with ``seq`` an SQL expression (a column, or 'null') and the
    named parameters of ``notify_params``. Written once, for every statement
    that announces (announce, record_event, the ledger's lean writes)."""
    return (
        "pg_notify(%(channel)s, '{\"topics\":' || %(topics)s || ',\"seq\":' || " + seq + " || '}')"
    )


def notify_params(topics: list[str]) -> dict:
    return {"channel": CHANNEL, "topics": json.dumps(topics, separators=(",", ":"))}


def announce(topics: list[str], seq: int | None = None) -> None:
    """Tell every listening console process that ``topics`` changed.

    The payload only says *what* changed; listeners read the rows themselves,
    so it stays far below PostgreSQL's 8000-byte limit.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT " + notify_sql("coalesce(%(seq)s::bigint::text, 'null')"),
            {**notify_params(topics), "seq": seq},
        )


def topics_for(tenant: Tenant | None) -> list[str]:
    topics = ["tenants", "audit"]
    if tenant is not None:
        topics.insert(0, f"tenant-{tenant.pk}")
    return topics


def record_event(
    type: str,
    *,
    tenant: Tenant | None = None,
    run: ProvisioningRun | None = None,
    actor=None,
    details: dict | None = None,
) -> AuditEvent:
    """Insert the event and announce it: one statement (the insert's seq goes
    straight into the notification)."""
    details = details or {}
    if (token := _api_token.get()) is not None:
        details = {**details, "api_token": token}
    event = AuditEvent(
        type=type,
        tenant=tenant,
        run=run,
        actor=actor if isinstance(actor, str) else actor_name(actor),
        details=details,
        created_at=timezone.now(),
    )
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH event AS (
                INSERT INTO provisioning_auditevent
                       (type, tenant_id, run_id, actor, details, created_at)
                VALUES (%(type)s, %(tenant)s, %(run)s, %(actor)s, %(details)s::jsonb, %(at)s)
                RETURNING seq
            )
            SELECT seq, """
            + notify_sql("seq")
            + """
              FROM event
            """,
            {
                "type": event.type,
                "tenant": tenant.pk if tenant else None,
                "run": run.pk if run else None,
                "actor": event.actor,
                "details": json.dumps(event.details, cls=DjangoJSONEncoder),
                "at": event.created_at,
                **notify_params(topics_for(tenant)),
            },
        )
        event.seq = cursor.fetchone()[0]
    event._state.adding = False
    event._state.db = connection.alias
    return event
