from django.db import connection
from psycopg import sql

from provisioning.steps.base import Step

MARKER = "tenant-console:tenant="


def schema_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [name])
        return cursor.fetchone() is not None


def managed_schemas() -> dict[str, int]:
    """Schemas the platform made, by name, with the tenant id in their comment."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname, obj_description(n.oid, 'pg_namespace') FROM pg_namespace n "
            "WHERE obj_description(n.oid, 'pg_namespace') LIKE %s",
            [MARKER + "%"],
        )
        return {name: int(comment.removeprefix(MARKER)) for name, comment in cursor.fetchall()}


def drop_schema(name: str) -> bool:
    if not schema_exists(name):
        return False
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    return True


class AllocateStorage(Step):
    id = "allocate_storage"
    label = "Allocate storage"
    seconds = 30

    def run(self, ctx) -> dict:
        name = ctx.tenant.schema_name
        if schema_exists(name):
            ctx.log(f"schema {name} already exists; reusing it")
        else:
            with connection.cursor() as cursor:
                cursor.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name))
                )
            ctx.log(f"created schema {name}")
        # The comment labels the schema as ours, for reconciliation.
        with connection.cursor() as cursor:
            cursor.execute(
                sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                    sql.Identifier(name), sql.Literal(f"{MARKER}{ctx.tenant.pk}")
                )
            )
        return {"schema": name}

    def compensate(self, ctx) -> None:
        name = ctx.tenant.schema_name
        if drop_schema(name):
            ctx.log(f"dropped schema {name}")
        else:
            ctx.log(f"schema {name} already gone")

    def verify(self, ctx, outputs) -> bool:
        return schema_exists(ctx.tenant.schema_name)
