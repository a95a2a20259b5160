from pathlib import Path

from axes.utils import reset as reset_sign_in_lockouts
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Create the first superuser, or reset its password (and lift a sign-in lockout), "
        "from a password file."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password-file", required=True, type=Path)

    def handle(self, *args, **options):
        User = get_user_model()
        # The user model's own rules (length, allowed characters), checked before any
        # query: PostgreSQL would raise on a NUL.
        try:
            User._meta.get_field(User.USERNAME_FIELD).clean(options["username"], None)
        except ValidationError as exc:
            raise CommandError(f"--username: {exc.messages[0]}") from None
        try:
            password = options["password_file"].read_text().strip()
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            reason = getattr(exc, "strerror", None) or str(exc)
            raise CommandError(f"cannot read {options['password_file']!r}: {reason}") from None
        except UnicodeError:
            raise CommandError(f"{options['password_file']!r} is not UTF-8 text") from None
        if len(password) < 8:
            raise CommandError("the password file must hold at least 8 characters")
        user, created = User.objects.get_or_create(
            username=options["username"], defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"{'created' if created else 'updated'} superuser {user.username}")
        # A reset password is no use while failed tries still lock the account.
        if reset_sign_in_lockouts(username=user.username):
            self.stdout.write(f"lifted the sign-in lockout of {user.username}")
