from django.core.management.base import BaseCommand, CommandError

from provisioning import actions
from provisioning.management.commands._common import checked_reason, get_tenant, seconds
from provisioning.report import wait_until_settled


class Command(BaseCommand):
    help = "Remove everything a tenant has and free its slug."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--wait", action="store_true", help="wait until decommissioned")
        parser.add_argument("--timeout", type=seconds, default=600)
        parser.add_argument("--reason", default="")

    def handle(self, *args, **options):
        reason = checked_reason(options["reason"])
        tenant = get_tenant(options["slug"])
        try:
            actions.decommission_tenant(tenant, reason=reason)
        except actions.ActionError as exc:
            raise CommandError(str(exc)) from None
        if not options["wait"]:
            self.stdout.write(f"decommissioning {tenant.slug} started")
            return
        try:
            status = wait_until_settled(
                tenant, timeout=options["timeout"], echo=lambda line: self.stderr.write(line)
            )
        except TimeoutError as exc:
            raise CommandError(str(exc)) from None
        if status["state"] != "decommissioned":
            raise CommandError(
                f"{tenant.slug} is {status['state']}: {status['error'] or 'see tenant_status'}"
            )
        self.stdout.write(f"{tenant.slug} decommissioned; the slug is free again")
