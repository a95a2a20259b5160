from django.db import connection, transaction
from psycopg import sql

from provisioning.errors import PermanentError
from provisioning.steps.base import Step
from provisioning.steps.storage import schema_exists

# The tenant's own tables. IF NOT EXISTS and ON CONFLICT keep this idempotent.
TABLES = {
    "users": """
        CREATE TABLE IF NOT EXISTS {schema}.users (
            id bigserial PRIMARY KEY,
            email text NOT NULL UNIQUE,
            role text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
    "settings": """
        CREATE TABLE IF NOT EXISTS {schema}.settings (
            key text PRIMARY KEY,
            value text NOT NULL
        )""",
    "projects": """
        CREATE TABLE IF NOT EXISTS {schema}.projects (
            id bigserial PRIMARY KEY,
            name text NOT NULL UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
}


def existing_tables(schema: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema])
        return {row[0] for row in cursor.fetchall()}


class SeedSchema(Step):
    id = "seed_schema"
    label = "Apply tenant schema"
    seconds = 30

    def run(self, ctx) -> dict:
        tenant = ctx.tenant
        name = tenant.schema_name
        if not schema_exists(name):
            # allocate_storage made it; its absence is not fixed by waiting.
            raise PermanentError(f"schema {name} is missing", category="database")
        schema = sql.Identifier(name)
        seeds = [
            ("plan", tenant.plan.name),
            ("org", tenant.org),
            ("slug", tenant.slug),
        ]
        with transaction.atomic(), connection.cursor() as cursor:
            for table, ddl in TABLES.items():
                cursor.execute(sql.SQL(ddl).format(schema=schema))
                ctx.log(f"table {name}.{table} ready")
            cursor.execute(
                sql.SQL(
                    "INSERT INTO {}.users (email, role) VALUES (%s, 'admin') "
                    "ON CONFLICT (email) DO NOTHING"
                ).format(schema),
                [tenant.admin_email],
            )
            for key, value in seeds:
                cursor.execute(
                    sql.SQL(
                        "INSERT INTO {}.settings (key, value) VALUES (%s, %s) "
                        "ON CONFLICT (key) DO NOTHING"
                    ).format(schema),
                    [key, value],
                )
            cursor.execute(
                sql.SQL(
                    "INSERT INTO {}.projects (name) VALUES ('Getting started') "
                    "ON CONFLICT (name) DO NOTHING"
                ).format(schema)
            )
        ctx.log(f"seeded admin {tenant.admin_email}, {len(seeds)} settings and a first project")
        return {"schema": name, "tables": sorted(TABLES)}

    def compensate(self, ctx) -> None:
        name = ctx.tenant.schema_name
        if not schema_exists(name):
            ctx.log("schema already gone; no tables to drop")
            return
        with connection.cursor() as cursor:
            for table in reversed(list(TABLES)):
                cursor.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}.{} CASCADE").format(
                        sql.Identifier(name), sql.Identifier(table)
                    )
                )
        ctx.log(f"dropped tables {', '.join(TABLES)} from {name}")

    def verify(self, ctx, outputs) -> bool:
        return set(TABLES) <= existing_tables(ctx.tenant.schema_name)
