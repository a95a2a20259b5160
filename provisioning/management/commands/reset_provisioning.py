from django.core.management.base import BaseCommand, CommandError

from provisioning import actions
from provisioning.management.commands._common import checked_reason, get_tenant


class Command(BaseCommand):
    help = "Clear a finished run's state so that the next retry starts from the first step."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--reason", default="")

    def handle(self, *args, **options):
        reason = checked_reason(options["reason"])
        tenant = get_tenant(options["slug"])
        try:
            run = actions.reset_provisioning(tenant, reason=reason)
        except actions.ActionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"reset attempt {run.attempt} of {tenant.slug}; retry starts from the top"
        )
