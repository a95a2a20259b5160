from django.core.management.base import BaseCommand, CommandError

from provisioning import actions
from provisioning.management.commands._common import checked_reason, get_tenant


class Command(BaseCommand):
    help = "Start a new provisioning attempt for a failed tenant."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--force", action="store_true", help="retry past 3 failed attempts")
        parser.add_argument("--reason", default="")

    def handle(self, *args, **options):
        reason = checked_reason(options["reason"])
        tenant = get_tenant(options["slug"])
        try:
            run = actions.retry_provisioning(tenant, force=options["force"], reason=reason)
        except actions.ActionError as exc:
            raise CommandError(str(exc)) from None
        skipped = run.steps.filter(status="skipped").count()
        where = f"resuming after {skipped} intact step(s)" if skipped else "from the first step"
        self.stdout.write(f"attempt {run.attempt} of {tenant.slug} started, {where}")
