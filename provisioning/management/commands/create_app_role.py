import os

import psycopg
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection

from provisioning import dbroles

PASSWORD_ENV = "APP_ROLE_PASSWORD"


class Command(BaseCommand):
    help = (
        "Create or update the database role the console runs as: it owns nothing, and may "
        "only read and append audit events. Run it as the owner who runs migrate. A new "
        f"role gets {PASSWORD_ENV} or a generated password, printed once as the last word; "
        f"an existing one keeps its password unless {PASSWORD_ENV} is set."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="the role's name (a-z, 0-9, _)")

    def handle(self, *args, **options):
        name = options["name"]
        # Checked before connecting, so a bad name is one line even with no database.
        if message := dbroles.name_error(name):
            raise CommandError(message)
        password = os.environ.get(PASSWORD_ENV)
        try:
            connection.ensure_connection()
            created, generated = dbroles.ensure_app_role(connection.connection, name, password)
        except dbroles.RoleError as exc:
            raise CommandError(str(exc)) from None
        except (psycopg.Error, DatabaseError) as exc:
            # The server's first line (no DETAIL, HINT or traceback), e.g.
            # "permission denied to create role".
            raise CommandError(f"role {name}: {str(exc).strip().splitlines()[0]}") from None
        if generated:
            self.stdout.write(f"created role {name}; its password (shown once): {generated}")
        elif created:
            self.stdout.write(f"created role {name} with the password in {PASSWORD_ENV}")
        else:
            state = "password set from " + PASSWORD_ENV if password else "password unchanged"
            self.stdout.write(f"updated role {name}: privileges set, {state}")
