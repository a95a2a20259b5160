import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from provisioning import actions, dryrun, faults
from provisioning.management.commands._common import seconds
from provisioning.report import as_json, as_text, wait_until_settled
from tenants.validation import first_error


class Command(BaseCommand):
    help = "Create a tenant and start provisioning it (returns at once unless --wait)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--org", required=True)
        parser.add_argument("--plan", required=True)
        parser.add_argument("--admin-email", required=True)
        parser.add_argument("--wait", action="store_true", help="wait until active or failed")
        parser.add_argument("--timeout", type=seconds, default=600, help="seconds --wait waits")
        parser.add_argument("--json", action="store_true", help="print the status JSON")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="run the validate step's checks and say what would be created; create nothing",
        )
        parser.add_argument(
            "--fault",
            action="append",
            default=[],
            metavar="STEP:KIND[:N]",
            help="inject a fault (only where PROVISIONING_FAULTS_ENABLED=1)",
        )

    def handle(self, *args, **options):
        try:
            injected = [faults.parse(spec) for spec in options["fault"]]
        except (ValueError, faults.FaultsDisabled) as exc:
            raise CommandError(str(exc)) from None
        if options["dry_run"]:
            try:
                plan = dryrun.check(
                    options["slug"], options["org"], options["plan"], options["admin_email"]
                )
            except ValidationError as exc:
                raise CommandError(first_error(exc)) from None
            self.stdout.write(
                json.dumps(plan, indent=2) if options["json"] else dryrun.as_text(plan)
            )
            return
        try:
            tenant = actions.create_tenant(
                slug=options["slug"],
                org=options["org"],
                plan=options["plan"],
                admin_email=options["admin_email"],
                faults=injected,
            )
        except ValidationError as exc:
            raise CommandError(first_error(exc)) from None
        if not options["wait"]:
            if options["json"]:
                from provisioning.status import tenant_status

                self.stdout.write(as_json(tenant_status(tenant)))
            else:
                self.stdout.write(f"provisioning {tenant} started; follow it with tenant_status")
            return
        try:
            status = wait_until_settled(
                tenant, timeout=options["timeout"], echo=lambda line: self.stderr.write(line)
            )
        except TimeoutError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(as_json(status) if options["json"] else as_text(status))
        if status["state"] != "active":
            raise CommandError(
                f"{tenant.slug} ended {status['state']} at {status['failed_step']}: "
                f"{status['error']}"
            )
