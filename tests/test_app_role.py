"""The audit log's protection, and the role the console runs as (docs/DATABASE.md).

Each test makes its own role as the owner, on the test database, and connects
as it with psycopg; so this file proves the same whichever role the rest of
the suite runs as (TEST_APP_ROLE).
"""

import itertools
import os
import subprocess
import sys

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from psycopg import errors, sql

from provisioning import dbroles
from provisioning.audit import record_event
from provisioning.models import AuditEvent
from provisioning.steps.schema import existing_tables
from provisioning.steps.storage import MARKER, schema_exists
from tests.conftest import (
    ROOT,
    database_url,
    drive,
    new_tenant,
    owner_database_url,
    signed_in_as,
    subprocess_env,
)

pytestmark = pytest.mark.django_db(transaction=True)
_serial = itertools.count()


class Role:
    def __init__(self, owner: psycopg.Connection):
        self.owner = owner
        self.name = f"tc_app_{os.getpid()}_{next(_serial)}"
        self.password = "pw-" + self.name

    def make(self):
        return dbroles.ensure_app_role(self.owner, self.name, self.password)

    def connect(self) -> psycopg.Connection:
        login = {**connection.settings_dict, "USER": self.name, "PASSWORD": self.password}
        return psycopg.connect(database_url(login), autocommit=True)

    def holds(self, table: str, privilege: str) -> bool:
        return self.owner.execute(
            "SELECT has_table_privilege(%s, %s, %s)", [self.name, table, privilege]
        ).fetchone()[0]


@pytest.fixture
def owner():
    with psycopg.connect(owner_database_url(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def new_role(owner):
    """A role name for the test; whatever it became, it is dropped afterwards."""
    made: list[Role] = []

    def make_role() -> Role:
        made.append(Role(owner))
        return made[-1]

    yield make_role
    for role in made:
        name = sql.Identifier(role.name)
        # Its schemas, grants and default privileges here, then the role itself.
        if owner.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role.name]).fetchone():
            owner.execute(sql.SQL("DROP OWNED BY {}").format(name))
            owner.execute(sql.SQL("DROP ROLE {}").format(name))


@pytest.fixture
def app(new_role):
    role = new_role()
    role.make()
    with role.connect() as conn:
        role.conn = conn
        yield role


@pytest.fixture
def event():
    return record_event("tenant.created", details={"slug": "acme"})


def test_the_owner_cannot_truncate_the_audit_log(owner, event):
    with pytest.raises(errors.InsufficientPrivilege, match=r"append-only \(TRUNCATE refused\)"):
        owner.execute("TRUNCATE provisioning_auditevent")
    # A cascade from the tables the events point at reaches it too.
    with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        owner.execute("TRUNCATE tenants_tenant CASCADE")
    assert AuditEvent.objects.filter(pk=event.seq).exists()


@pytest.mark.parametrize(
    "statement, refusal",
    [
        ("UPDATE provisioning_auditevent SET type = 'edited'", "permission denied"),
        ("DELETE FROM provisioning_auditevent", "permission denied"),
        ("TRUNCATE provisioning_auditevent", "permission denied"),
        ("TRUNCATE tenants_tenant CASCADE", "permission denied"),
        ("ALTER TABLE provisioning_auditevent DISABLE TRIGGER ALL", "must be owner"),
        ("ALTER TABLE provisioning_auditevent DISABLE TRIGGER USER", "must be owner"),
        ("DROP TRIGGER provisioning_auditevent_append_only ON provisioning_auditevent", "owner"),
        ("DROP TABLE provisioning_auditevent CASCADE", "must be owner"),
        ("SET session_replication_role = replica", "permission denied to set parameter"),
        ("SET ROLE {owner}", "permission denied to set role"),
        ("INSERT INTO django_migrations (app, name, applied) VALUES ('a', 'b', now())", "denied"),
    ],
)
def test_the_app_role_cannot_rewrite_the_audit_log(owner, app, event, statement, refusal):
    with pytest.raises(errors.InsufficientPrivilege, match=refusal):
        app.conn.execute(statement.format(owner=owner.info.user))
    assert AuditEvent.objects.get(pk=event.seq).type == "tenant.created"


def test_the_app_role_reads_and_appends_audit_events_and_manages_tenant_schemas(app, event):
    conn = app.conn
    conn.execute(
        "INSERT INTO provisioning_auditevent (type, actor, details, created_at) "
        "VALUES ('tenant.created', 'system', '{}', now())"
    )
    assert conn.execute("SELECT count(*) FROM provisioning_auditevent").fetchone()[0] == 2
    # The storage and schema steps' statements, and the announcement.
    conn.execute("CREATE SCHEMA t999_acme")
    conn.execute(sql.SQL("COMMENT ON SCHEMA t999_acme IS {}").format(sql.Literal(MARKER + "999")))
    conn.execute("CREATE TABLE t999_acme.users (id bigserial PRIMARY KEY, email text)")
    conn.execute("INSERT INTO t999_acme.users (email) VALUES ('a@example.com')")
    conn.execute("DROP TABLE t999_acme.users")
    conn.execute("DROP SCHEMA t999_acme CASCADE")
    conn.execute("SELECT pg_notify('console', '{}')")
    assert not schema_exists("t999_acme")


def test_the_app_role_runs_the_saga_and_decommissions(app, plans, settings):
    """The console's work, end to end, on connections that sign in as the role."""
    from provisioning import actions

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    with signed_in_as(app.name, app.password):
        tenant = new_tenant()
        assert drive(tenant) == "succeeded"
        assert {"users", "settings", "projects"} <= existing_tables(tenant.schema_name)
        actions.decommission_tenant(tenant)
        assert drive(tenant) == "decommissioned"
        assert not schema_exists(tenant.schema_name)
        assert AuditEvent.objects.filter(tenant=tenant).count() > 20
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone()[0] == app.name


def test_the_app_role_can_check_that_migrations_are_applied(app):
    with signed_in_as(app.name, app.password):
        call_command("migrate", "--check", verbosity=0)  # exits 1 when one is not


def test_a_schema_named_after_the_owner_does_not_capture_the_owners_queries(owner, app):
    """The app role may create schemas; one named after the owner is first on its default path."""
    squat = sql.Identifier(owner.info.user)
    app.conn.execute(sql.SQL("CREATE SCHEMA {}").format(squat))
    app.conn.execute(sql.SQL("CREATE TABLE {}.tenants_plan (name text)").format(squat))
    app.conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(squat))
    where = (
        "SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'tenants_plan'::regclass"
    )
    assert owner.execute(where).fetchone()[0] == owner.info.user  # the default path: captured
    # As the console's settings connect (console/database.py), the owner's migrate included.
    options = connection.settings_dict["OPTIONS"]
    with psycopg.connect(owner_database_url(), **options) as as_the_app_connects:
        assert as_the_app_connects.execute(where).fetchone()[0] == "public"


def test_tables_a_later_migration_makes_are_usable_at_once(owner, app):
    owner.execute("CREATE TABLE provisioning_later (id bigserial PRIMARY KEY, note text)")
    try:
        app.conn.execute("INSERT INTO provisioning_later (note) VALUES ('x')")
        app.conn.execute("UPDATE provisioning_later SET note = 'y'")
        app.conn.execute("DELETE FROM provisioning_later")
    finally:
        owner.execute("DROP TABLE provisioning_later")


def test_making_the_role_again_takes_away_extra_privileges(owner, app):
    owner.execute(f"GRANT UPDATE, DELETE, TRUNCATE ON provisioning_auditevent TO {app.name}")
    assert app.holds("provisioning_auditevent", "UPDATE")
    assert app.make() == (False, None)
    for privilege in ("UPDATE", "DELETE", "TRUNCATE"):
        assert not app.holds("provisioning_auditevent", privilege)
    assert app.holds("provisioning_auditevent", "INSERT")
    assert app.holds("tenants_tenant", "UPDATE")


def test_it_hands_the_role_tenant_schemas_made_before_it(owner, new_role):
    owner.execute("CREATE SCHEMA t998_old")
    owner.execute(sql.SQL("COMMENT ON SCHEMA t998_old IS {}").format(sql.Literal(MARKER + "998")))
    owner.execute("CREATE TABLE t998_old.users (id bigserial PRIMARY KEY)")
    role = new_role()
    role.make()
    with role.connect() as conn:
        conn.execute("INSERT INTO t998_old.users DEFAULT VALUES")
        conn.execute("DROP TABLE t998_old.users")  # seed_schema's compensation
        conn.execute("DROP SCHEMA t998_old CASCADE")


def test_a_role_with_another_way_to_rewrite_the_log_is_refused_and_nothing_changes(owner, new_role):
    role = new_role()
    owner.execute(f"CREATE ROLE {role.name} LOGIN IN ROLE pg_write_all_data")
    with pytest.raises(dbroles.RoleError, match="would still hold UPDATE, DELETE"):
        role.make()
    assert not role.holds("tenants_tenant", "SELECT")  # the grants were rolled back


def test_the_owner_or_a_superuser_is_refused(owner):
    me = owner.execute("SELECT current_user").fetchone()[0]
    with pytest.raises(dbroles.RoleError, match=f"role {me} is"):
        dbroles.ensure_app_role(owner, me)


@pytest.mark.parametrize(
    "name",
    [
        "Console",
        "pg_console",
        "1console",
        "a-b",
        'x"; DROP TABLE tenants_tenant; --',
        "é",
        "a" * 64,
    ],
)
def test_a_bad_name_is_one_clear_error(name):
    with pytest.raises(CommandError, match="is not a role name this command makes"):
        call_command("create_app_role", name)


def test_the_command_creates_then_updates_and_prints_the_password_once(owner, new_role):
    role = new_role()

    def command() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "create_app_role", role.name],
            cwd=ROOT,
            env=subprocess_env(DATABASE_URL=owner_database_url()),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stored() -> str:
        return owner.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role.name]
        ).fetchone()[0]

    first = command()
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"created role {role.name}; its password (shown once): ")
    password = first.stdout.split()[-1]
    hashed = stored()
    assert hashed.startswith("SCRAM-SHA-256$") and password not in hashed
    again = command()
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"updated role {role.name}: privileges set, password unchanged"
    assert stored() == hashed


def test_the_command_fails_in_one_line_and_changes_nothing(owner, new_role):
    role = new_role()
    # Signed in as a role that may not create roles.
    owner.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role.name)))
    with signed_in_as(role.name, ""), pytest.raises(CommandError) as refused:
        call_command("create_app_role", role.name + "_x")
    assert str(refused.value) == f"role {role.name}_x: permission denied to create role"
    assert not owner.execute(
        "SELECT 1 FROM pg_roles WHERE rolname = %s", [role.name + "_x"]
    ).fetchone()
