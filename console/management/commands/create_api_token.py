from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from console.api.tokens import issue_token
from tenants.access import role_of
from tenants.validation import shown, text_error

NAME_MAX = 80


class Command(BaseCommand):
    help = (
        "Make an API token for /api/v1/ that acts as USERNAME (with that user's role). "
        "The token is printed once, as the last word; only its digest is kept."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what uses it (kept in the audit log)")

    def handle(self, *args, **options):
        name = options["name"].strip() or "api"
        if message := text_error(name, "name", max_len=NAME_MAX):
            raise CommandError(f"--name: {message}")
        username = options["username"]
        if text_error(username, "username", max_len=150):
            raise CommandError(f"{shown(username)} is not a username")
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"no active user {username!r}; create it in the admin first")
        token, raw = issue_token(user, name)
        self.stderr.write(
            f"token {token.name!r} for {user.username} ({role_of(user)}); "
            "it is shown once: store it now"
        )
        self.stdout.write(raw)
