from django.core.management.base import BaseCommand

from provisioning.management.commands._common import get_tenant
from provisioning.report import as_json, as_text
from provisioning.status import tenant_status


class Command(BaseCommand):
    help = "Show a tenant's state and its provisioning steps."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--json", action="store_true", help="print the status JSON")

    def handle(self, *args, **options):
        status = tenant_status(get_tenant(options["slug"]))
        self.stdout.write(as_json(status) if options["json"] else as_text(status))
