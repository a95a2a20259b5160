from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create the first superuser, or reset its password, from a password file."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password-file", required=True, type=Path)

    def handle(self, *args, **options):
        try:
            password = options["password_file"].read_text().strip()
        except OSError as exc:
            raise CommandError(f"cannot read {options['password_file']}: {exc.strerror}") from None
        if len(password) < 8:
            raise CommandError("the password file must hold at least 8 characters")
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=options["username"], defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"{'created' if created else 'updated'} superuser {user.username}")
