from django.core.management.base import BaseCommand

from provisioning import diagnostics
from provisioning.management.commands._common import get_tenant


class Command(BaseCommand):
    help = "Print a tenant's escalation bundle: attempts, errors, operator actions, resources."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--json", action="store_true", help="print the bundle as JSON")

    def handle(self, *args, **options):
        data = diagnostics.bundle(get_tenant(options["slug"]))
        self.stdout.write(
            diagnostics.as_json(data) if options["json"] else diagnostics.as_text(data)
        )
