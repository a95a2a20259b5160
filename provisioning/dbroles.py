"""The database role the console runs as: it owns nothing (docs/DATABASE.md).

Migrations run as the owner of the app's tables. The console, its workers and
its commands connect as a role made here, which may read and write the app's
tables but only read and append audit events. Being neither the owner nor a
superuser, it cannot TRUNCATE or ALTER the audit table (and so cannot disable
its triggers) or set ``session_replication_role`` (which would skip them).

It has CREATE on the database because the saga's storage step creates a
PostgreSQL schema per tenant, and its compensation drops it: those schemas,
and the tables seed_schema puts in them, belong to this role. Nothing of the
app's own belongs to it.
"""

from __future__ import annotations

import re
import secrets

import psycopg
from django.apps import apps
from django.conf import settings
from django.db.migrations.recorder import MigrationRecorder
from psycopg import sql

from provisioning.models import AuditEvent
from provisioning.steps.storage import MARKER
from tenants.validation import shown

# Lower-case and unquoted-safe, so the name reads the same in psql, a
# DATABASE_URL and pg_hba.conf; at most 63 bytes (NAMEDATALEN). PostgreSQL
# reserves pg_*.
NAME_RE = re.compile(r"(?!pg_)[a-z_][a-z0-9_]{0,62}")
# What the console does to its tables, and to the audit log (append only).
TABLE_PRIVILEGES = sql.SQL("SELECT, INSERT, UPDATE, DELETE")
AUDIT_PRIVILEGES = sql.SQL("SELECT, INSERT")
AUDIT_TABLE = AuditEvent._meta.db_table
# Identity columns (Django's AutoField) draw from sequences.
SEQUENCE_PRIVILEGES = sql.SQL("USAGE, SELECT")


class RoleError(Exception):
    """The role cannot be made as asked; the message is one line for an operator."""


def name_error(name: str) -> str | None:
    if NAME_RE.fullmatch(name):
        return None
    return (
        f"{shown(name)} is not a role name this command makes: 1 to 63 characters of "
        "a-z, 0-9 and _, not starting with a digit or pg_"
    )


def app_tables() -> dict[str, sql.SQL]:
    """Every table the console uses, with what the app role may do to it.

    The tables of every installed model (django_q's and the sessions'
    included); the audit events only read and appended; the migrations table
    only read, so a deploy can ask `migrate --check` as the app role while
    only the owner migrates; and the cache tables settings.CACHES names.
    """
    tables = {
        model._meta.db_table: TABLE_PRIVILEGES
        for model in apps.get_models(include_auto_created=True)
        if model._meta.managed and not model._meta.proxy
    }
    # Database caches (the API's rate limits, settings.CACHES): written by every request.
    for cache in settings.CACHES.values():
        if cache["BACKEND"] == "django.core.cache.backends.db.DatabaseCache":
            tables[cache["LOCATION"]] = TABLE_PRIVILEGES
    tables[MigrationRecorder.Migration._meta.db_table] = sql.SQL("SELECT")
    tables[AUDIT_TABLE] = AUDIT_PRIVILEGES
    return tables


def ensure_app_role(
    conn: psycopg.Connection, name: str, password: str | None = None
) -> tuple[bool, str | None]:
    """Create or update role ``name`` on ``conn``'s database.

    Returns whether it was created, and the password generated for it when it
    was created without one (``password`` None keeps an existing role's).
    ``conn`` must be the owner of the app's tables (who runs migrate) or a
    superuser. Idempotent: a second call sets the same privileges, revoking
    any extra ones on the app's tables. One transaction: an error changes
    nothing.
    """
    if message := name_error(name):
        raise RoleError(message)
    if password is not None and (not password or "\x00" in password):
        raise RoleError("the password must be non-empty and contain no NUL")
    role = sql.Identifier(name)
    wanted = app_tables()
    with conn.transaction(), conn.cursor() as cur:
        tables, owner = _locate_tables(cur, sorted(wanted))
        created = _create_or_update(cur, name, owner)
        generated = secrets.token_urlsafe(32) if created and password is None else None
        if password or generated:
            _set_password(cur, conn, name, password or generated)
        database = cur.execute("SELECT current_database()").fetchone()[0]
        # CREATE: the tenants' schemas (see the module's docstring).
        cur.execute(
            sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(database), role
            )
        )
        for schema in sorted(set(tables.values())):
            _grant_schema(cur, sql.Identifier(schema), role, sql.Identifier(owner))
        for table, privileges in wanted.items():
            cur.execute(
                sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    privileges, sql.Identifier(tables[table], table), role
                )
            )
        _adopt_tenant_schemas(cur, name)
        audit = sql.Identifier(tables[AUDIT_TABLE], AUDIT_TABLE).as_string(cur)
        _check_log_is_safe(cur, name, audit)
    return created, generated


def _locate_tables(cur, names: list[str]) -> tuple[dict[str, str], str]:
    """The schema of each of the tables ``names``, by name, and their one owner."""
    rows = cur.execute(
        "SELECT t.name, n.nspname, pg_get_userbyid(c.relowner) "
        "FROM unnest(%s::text[]) AS t(name) "
        "LEFT JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name)) "
        "LEFT JOIN pg_namespace n ON n.oid = c.relnamespace",
        [names],
    ).fetchall()
    missing = [table for table, schema, _ in rows if schema is None]
    if missing:
        raise RoleError(
            f"table {missing[0]} does not exist here: run `manage.py migrate` as the owner first"
        )
    owners = sorted({owner for *_, owner in rows})
    if len(owners) > 1:
        raise RoleError(f"the app's tables have several owners ({', '.join(owners)}); expected one")
    return {table: schema for table, schema, _ in rows}, owners[0]


def _create_or_update(cur, name: str, owner: str) -> bool:
    role = sql.Identifier(name)
    found = cur.execute(
        "SELECT rolsuper, pg_has_role(oid, %s, 'MEMBER'), "
        "rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
        "FROM pg_roles WHERE rolname = %s",
        [owner, name],
    ).fetchone()
    if found is None:
        # CREATE ROLE's defaults are what we want: NOSUPERUSER NOCREATEDB
        # NOCREATEROLE NOREPLICATION NOBYPASSRLS.
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    else:
        superuser, owns, *powers = found
        # MEMBER, not USAGE: a NOINHERIT member can still SET ROLE to the owner.
        if superuser:
            raise RoleError(f"role {name} is a superuser; choose a role that owns nothing")
        if owns:
            raise RoleError(
                f"role {name} is, or is a member of, {owner}, the owner of the app's tables; "
                "choose a role that owns nothing"
            )
        # Only the attributes to take away: naming one at all may need more
        # privilege than the owner has (REPLICATION, BYPASSRLS: superuser).
        drop = [
            sql.SQL(clause)
            for clause, held in zip(
                ("NOCREATEROLE", "NOCREATEDB", "NOREPLICATION", "NOBYPASSRLS"), powers, strict=True
            )
            if held
        ]
        cur.execute(sql.SQL("ALTER ROLE {} LOGIN {}").format(role, sql.SQL(" ").join(drop)))
    return found is None


def _set_password(cur, conn, name: str, password: str) -> None:
    # Hashed here (SCRAM, or what the server's password_encryption says), so
    # the plain password is never in a statement or a server log.
    hashed = conn.pgconn.encrypt_password(password.encode(), name.encode()).decode()
    cur.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(hashed))
    )


def _grant_schema(cur, schema: sql.Identifier, role: sql.Identifier, owner: sql.Identifier):
    cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role))
    # Exactly the privileges below, whatever an earlier grant added.
    for kind in ("TABLES", "SEQUENCES"):
        cur.execute(
            sql.SQL("REVOKE ALL ON ALL {} IN SCHEMA {} FROM {}").format(sql.SQL(kind), schema, role)
        )
    cur.execute(
        sql.SQL("GRANT {} ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
            SEQUENCE_PRIVILEGES, schema, role
        )
    )
    # Tables and sequences a later migration makes (as the owner) are usable
    # at once, without running this command again.
    for kind, privileges in (("TABLES", TABLE_PRIVILEGES), ("SEQUENCES", SEQUENCE_PRIVILEGES)):
        cur.execute(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON {} TO {}"
            ).format(owner, schema, privileges, sql.SQL(kind), role)
        )


def _adopt_tenant_schemas(cur, name: str) -> None:
    """Hand the role the tenant schemas made before it ran the console.

    Dropping a schema and its tables (compensation, decommission, reconcile
    --fix) needs their ownership; schemas the role makes itself are its own.
    """
    role = sql.Identifier(name)
    schemas = cur.execute(
        "SELECT nspname FROM pg_namespace WHERE obj_description(oid, 'pg_namespace') LIKE %s "
        "AND nspowner <> to_regrole(%s)",
        [MARKER + "%", name],
    ).fetchall()
    for (schema,) in schemas:
        cur.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), role))
        tables = cur.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema]
        ).fetchall()
        for (table,) in tables:
            cur.execute(
                sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(schema, table), role)
            )


def _check_log_is_safe(cur, name: str, audit: str) -> None:
    """Refuse a role that could still rewrite the log through another grant.

    A grant to PUBLIC, membership in a role such as pg_write_all_data, or a
    GRANT SET ON PARAMETER (PostgreSQL 15+) gives what revoking ours does not
    take away.
    """
    held = [
        privilege
        for privilege in ("UPDATE", "DELETE", "TRUNCATE", "TRIGGER")
        if cur.execute(
            "SELECT has_table_privilege(%s, %s, %s)", [name, audit, privilege]
        ).fetchone()[0]
    ]
    if (
        cur.connection.info.server_version >= 150000
        and cur.execute(
            "SELECT has_parameter_privilege(%s, 'session_replication_role', 'SET')", [name]
        ).fetchone()[0]
    ):
        held.append("SET session_replication_role")
    if held:
        raise RoleError(
            f"role {name} would still hold {', '.join(held)} on the audit log through another "
            "grant or role membership; remove that first"
        )
