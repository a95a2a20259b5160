"""Audit events and the announcement that something changed.

``record_event`` is called by actions and by the engine's ledger inside their
transactions. It writes the append-only event and calls ``pg_notify`` in the
same transaction, so PostgreSQL announces the change only if it commits: a
rolled-back change is never announced and a committed one always is.
"""

from __future__ import annotations

import json

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.utils import timezone

from provisioning.models import AuditEvent, ProvisioningRun
from tenants.models import Tenant

CHANNEL = "console"


def actor_name(user) -> str:
    if user is None:
        return "system"
    return user.get_username() or f"user-{user.pk}"


def announce(topics: list[str], seq: int | None = None) -> None:
    """Tell every listening console process that ``topics`` changed.

    The payload only says *what* changed; listeners read the rows themselves,
    so it stays far below PostgreSQL's 8000-byte limit.
    """
    payload = json.dumps({"topics": topics, "seq": seq}, separators=(",", ":"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])


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
    event = AuditEvent(
        type=type,
        tenant=tenant,
        run=run,
        actor=actor if isinstance(actor, str) else actor_name(actor),
        details=details or {},
        created_at=timezone.now(),
    )
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH event AS (
                INSERT INTO provisioning_auditevent
                       (type, tenant_id, run_id, actor, details, created_at)
                VALUES (%s, %s, %s, %s, %s::jsonb, %s)
                RETURNING seq
            )
            SELECT seq, pg_notify(%s, '{"topics":' || %s || ',"seq":' || seq || '}')
              FROM event
            """,
            [
                event.type,
                tenant.pk if tenant else None,
                run.pk if run else None,
                event.actor,
                json.dumps(event.details, cls=DjangoJSONEncoder),
                event.created_at,
                CHANNEL,
                json.dumps(topics_for(tenant)),
            ],
        )
        event.seq = cursor.fetchone()[0]
    event._state.adding = False
    event._state.db = connection.alias
    return event
