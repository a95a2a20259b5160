import json

from django.core.management.base import BaseCommand

from provisioning import reconcile


class Command(BaseCommand):
    help = (
        "List orphaned resources (containers, networks, schemas, routes of no live tenant) "
        "and active tenants whose resources are missing; --fix removes the orphans."
    )

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true", help="remove the orphans")
        parser.add_argument("--json", action="store_true", help="print the findings as JSON")

    def handle(self, *args, **options):
        report, removed = reconcile.check(fix_orphans=options["fix"])
        if options["json"]:
            data = {**report.as_dict(), "removed": [f.as_dict() for f in removed]}
            self.stdout.write(json.dumps(data, indent=2, sort_keys=True))
            return
        for finding in removed:
            self.stdout.write(f"removed  {finding.kind:<10} {finding.name}  ({finding.why})")
        for error in report.errors:
            self.stderr.write(f"not checked: {error}")
        if not report.findings:
            self.stdout.write("reconcile: nothing to report")
            return
        for finding in report.findings:
            self.stdout.write(finding.line())
        new = len(report.new)
        orphans = len(report.orphans)
        summary = f"reconcile: {len(report.findings)} problem(s), {new or 'nothing'} new"
        if orphans:
            summary += f"; `{reconcile.FIX_COMMAND}` removes the {orphans} orphan(s)"
        self.stdout.write(summary)
