from django.core.management.base import BaseCommand, CommandError

from provisioning import actions
from provisioning.management.commands._common import checked_reason, get_tenant


class Command(BaseCommand):
    help = "Ask a provisioning run to stop; it compensates and the tenant ends failed (cancelled)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--reason", default="")

    def handle(self, *args, **options):
        reason = checked_reason(options["reason"])
        tenant = get_tenant(options["slug"])
        try:
            run = actions.request_cancel(tenant, reason=reason)
        except actions.ActionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"cancel requested for {tenant.slug} (attempt {run.attempt})")
