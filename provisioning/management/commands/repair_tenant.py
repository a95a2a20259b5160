import json

from django.core.management.base import BaseCommand, CommandError

from provisioning import actions
from provisioning.management.commands._common import checked_reason, get_tenant


class Command(BaseCommand):
    help = (
        "Bring an active tenant to its plan now: recreate missing replicas, start stopped ones, "
        "replace unhealthy ones, point the route at them (what the repair loop does every 30 s)."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
        parser.add_argument("--reason", default="", help="kept in the audit log")

    def handle(self, *args, **options):
        reason = checked_reason(options["reason"])
        tenant = get_tenant(options["slug"])
        try:
            outcome = actions.repair_tenant(tenant, reason=reason, source="command")
        except actions.ActionError as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps(outcome.as_dict(), indent=2, sort_keys=True))
        else:
            for repair in outcome.repairs:
                self.stdout.write(f"repaired {repair.what} in {repair.seconds:.1f}s: {repair.why}")
            state = f"{outcome.healthy}/{outcome.expected} replicas healthy"
            if not outcome.repairs and not outcome.error:
                self.stdout.write(f"{tenant.slug}: {state}; nothing to repair")
            elif not outcome.error:
                self.stdout.write(f"{tenant.slug}: {state}")
        if outcome.error:
            raise CommandError(f"{tenant.slug} could not be repaired: {outcome.error}")
