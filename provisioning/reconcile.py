"""Reconciliation: what exists on the engine and in the database against what tenants record.

    report = find_drift()          # read-only
    removed = fix(report)          # removes the orphans, one audit event each

Two kinds of finding:

- **orphan**: a container, network, schema or route labelled as this
  installation's that belongs to no live tenant. Its tenant does not exist
  (or has another slug), is decommissioned, or failed with no run in flight
  and the step that makes that kind of resource not recorded as succeeded or
  skipped in its latest provisioning run (so a retry would make it again).
  Tenants with a run in flight are never judged: their steps are busy.
- **missing**: an active tenant (no run in flight) whose recorded resources
  are gone: a replica not running, the network, the schema, or the route
  missing or switched off. These are reported with a suggested action and
  never fixed here. Workloads and routes are what the repair loop
  (provisioning.repair) keeps in place, so for those the suggestion is
  `repair_tenant`, never decommissioning; only a lost schema (the tenant's
  data) calls for rebuilding the tenant.

Each tenant's workloads are looked up on its own driver (``driver_for``);
orphans on every driver in use (``drivers_in_use``).

Only containers and networks whose names start with ``tpc-<RESOURCE_NAMESPACE>``
directly followed by ``t<id>-<slug>`` are considered, and their labels must
agree with the name, so another installation's (or a test run's) resources on
the same engine are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from provisioning.audit import announce, record_event
from provisioning.drivers import driver_for, drivers_in_use, get_driver
from provisioning.drivers.base import (
    LABEL_KEY,
    LABEL_TENANT,
    NAME_PREFIX,
    network_name,
    replica_name,
)
from provisioning.models import ProvisioningRun, ReconcileReport, Route, StepRun, latest_run
from provisioning.steps.storage import drop_schema, managed_schemas, schema_exists
from tenants.models import Tenant

logger = logging.getLogger(__name__)

KEY_RE = re.compile(r"t(?P<id>[0-9]+)-(?P<slug>[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)")
REPLICA_RE = re.compile(r"(?P<key>.+)-r(?P<index>[0-9]+)")
# The step whose success records each kind of resource.
CREATED_BY = {
    "container": "deploy_workloads",
    "service": "deploy_workloads",
    "network": "allocate_network",
    "route": "allocate_network",
    "schema": "allocate_storage",
}
KEPT = (StepRun.Status.SUCCEEDED, StepRun.Status.SKIPPED)
FIX_ORDER = ("service", "container", "route", "network", "schema")
FIX_COMMAND = "manage.py reconcile --fix"


@dataclass
class Finding:
    problem: str  # "orphan" or "missing"
    kind: str  # container, service (a swarm's), network, schema, route
    name: str
    tenant_id: int | None
    tenant: str  # "acme (#5)", or "#999999" when there is no such tenant
    why: str
    key: str = ""  # driver key, for containers and networks
    suggestion: str = ""
    new: bool = False
    driver: str = ""  # the driver it was found on, for containers and networks

    @property
    def id(self) -> str:
        return f"{self.problem}:{self.kind}:{self.name}"

    def as_dict(self) -> dict:
        return {"id": self.id, **asdict(self)}

    def line(self) -> str:
        text = f"{self.problem:<8} {self.kind:<10} {self.name}  tenant {self.tenant}: {self.why}"
        if self.suggestion:
            text += f"; {self.suggestion}"
        return text + ("  [new]" if self.new else "")


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # what could not be checked, and why
    checked_at: object = None

    @property
    def orphans(self) -> list[Finding]:
        return [f for f in self.findings if f.problem == "orphan"]

    @property
    def missing(self) -> list[Finding]:
        return [f for f in self.findings if f.problem == "missing"]

    @property
    def new(self) -> list[Finding]:
        return [f for f in self.findings if f.new]

    def as_dict(self) -> dict:
        return {
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "problems": len(self.findings),
            "new": len(self.new),
            "findings": [f.as_dict() for f in self.findings],
            "errors": list(self.errors),
        }


# Ownership


def parse_key(name: str, *, replica: bool) -> tuple[str, int, str] | None:
    """(key, tenant id, slug) of one of this installation's names, or None if it is not one."""
    prefix = f"{NAME_PREFIX}{settings.RESOURCE_NAMESPACE}"
    if not name.startswith(prefix):
        return None
    key = name[len(NAME_PREFIX) :]
    if replica:
        match = REPLICA_RE.fullmatch(key)
        if not match:
            return None
        key = match["key"]
    match = _match_key(key)
    if not match:
        return None
    return key, int(match["id"]), match["slug"]


def _match_key(key: str) -> re.Match | None:
    """``t<id>-<slug>`` after the namespace in a driver key."""
    return KEY_RE.fullmatch(key[len(settings.RESOURCE_NAMESPACE) :])


def _labels_agree(labels: dict, key: str, tenant_id: int) -> bool:
    """Both drivers label the key; a label naming another key or tenant is not ours."""
    if labels.get(LABEL_KEY) != key:
        return False
    return labels.get(LABEL_TENANT) in (None, str(tenant_id))


class _Owners:
    """Tenants by id, each loaded once per report."""

    def __init__(self):
        self._tenants: dict[int, Tenant | None] = {}

    def tenant(self, tenant_id: int) -> Tenant | None:
        if tenant_id not in self._tenants:
            self._tenants[tenant_id] = (
                Tenant.objects.select_related("plan").filter(pk=tenant_id).first()
            )
        return self._tenants[tenant_id]

    def add(self, tenant: Tenant) -> None:
        self._tenants.setdefault(tenant.pk, tenant)

    def label(self, tenant_id: int | None) -> str:
        tenant = self.tenant(tenant_id) if tenant_id is not None else None
        return f"{tenant.slug} (#{tenant_id})" if tenant else f"#{tenant_id}"


def orphan_reason(tenant: Tenant | None, kind: str, *, slug: str | None = None) -> str:
    """Why a resource of ``kind`` for ``tenant`` is an orphan, or "" when a live tenant owns it."""
    if tenant is None:
        return "no such tenant"
    if slug is not None and slug != tenant.slug:
        return f"tenant #{tenant.pk} is {tenant.slug}, not {slug}"
    state = tenant.state
    S = Tenant.State
    if state == S.DECOMMISSIONED:
        return "tenant is decommissioned"
    if state != S.FAILED:
        return ""  # provisioning, active, decommissioning: its runs own it
    if ProvisioningRun.objects.filter(tenant=tenant, status__in=ProvisioningRun.LIVE).exists():
        return ""
    run = latest_run(tenant, ProvisioningRun.Kind.PROVISION)
    step = StepRun.objects.filter(run=run, step_id=CREATED_BY[kind]).first() if run else None
    if step is not None and step.status in KEPT:
        return ""  # a retry may resume after this step and reuse it
    status = step.status if step else "never run"
    return f"tenant failed and its {CREATED_BY[kind]} step is {status}"


def _reason(tenant: Tenant | None, kind: str, name: str, *, slug: str | None = None) -> str:
    """``orphan_reason``, plus the name check for schemas: one of a live tenant
    that is not its schema (an earlier slug's) is an orphan too."""
    why = orphan_reason(tenant, kind, slug=slug)
    if not why and kind == "schema" and tenant is not None and name != tenant.schema_name:
        why = f"tenant #{tenant.pk}'s schema is {tenant.schema_name}"
    return why


# Finding drift


def find_drift(driver=None) -> Report:
    """Every orphan and every missing resource, now. Reads only.

    ``driver`` (tests) stands in for every driver; by default each driver in
    use is listed, and each tenant is checked on its own.
    """
    report = Report(checked_at=timezone.now())
    owners = _Owners()
    if driver is not None:
        drivers = [driver]
    else:
        try:
            drivers = [get_driver(name) for name in drivers_in_use()]
        except Exception as exc:
            report.errors.append(f"workloads not checked: {exc.__class__.__name__}: {exc}")
            drivers = []
    for each in drivers:
        name = getattr(each, "name", "")
        try:
            managed = each.list_managed()
        except Exception as exc:  # an unreachable engine: report what can be checked
            report.errors.append(
                f"{name or 'driver'} workloads not checked: {exc.__class__.__name__}: {exc}"
            )
            continue
        kinds = (
            ("container", managed["replicas"]),
            # A swarm's services (their tasks are listed as containers by slot).
            ("service", managed.get("services", [])),
            ("network", managed["networks"]),
        )
        for kind, items in kinds:
            for item in items:
                parsed = parse_key(item.name, replica=kind == "container")
                if parsed is None:
                    continue
                key, tenant_id, slug = parsed
                if not _labels_agree(item.labels or {}, key, tenant_id):
                    continue
                why = _reason(owners.tenant(tenant_id), kind, item.name, slug=slug)
                if why:
                    report.findings.append(
                        Finding(
                            "orphan",
                            kind,
                            item.name,
                            tenant_id,
                            owners.label(tenant_id),
                            why,
                            key,
                            driver=name,
                        )
                    )

    for name, tenant_id in sorted(managed_schemas().items()):
        why = _reason(owners.tenant(tenant_id), "schema", name)
        if why:
            report.findings.append(
                Finding("orphan", "schema", name, tenant_id, owners.label(tenant_id), why)
            )

    for route in Route.objects.select_related("tenant").order_by("tenant_id"):
        owners.add(route.tenant)
        why = orphan_reason(route.tenant, "route")
        if why:
            report.findings.append(
                Finding(
                    "orphan",
                    "route",
                    route.hostname,
                    route.tenant_id,
                    owners.label(route.tenant_id),
                    why,
                )
            )

    report.findings.extend(_missing(driver, report))
    return report


def _missing(driver, report: Report) -> list[Finding]:
    findings = []
    live_runs = ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE)
    tenants = (
        Tenant.objects.filter(state=Tenant.State.ACTIVE)
        .exclude(pk__in=live_runs.values("tenant_id"))
        .select_related("plan")
        .order_by("pk")
    )
    routes = {r.tenant_id: r for r in Route.objects.filter(tenant__in=tenants)}
    for tenant in tenants:
        who = f"{tenant.slug} (#{tenant.pk})"
        # Replicas, the network and the route are kept in place by the repair
        # loop; advising to decommission a working tenant for them would be wrong.
        repair = (
            f"`manage.py repair_tenant {tenant.slug}` brings it back now "
            "(the repair loop does within 30 s)"
        )
        rebuild = (
            f"see `manage.py tenant_status {tenant.slug}`; to rebuild it, "
            f"`manage.py decommission_tenant {tenant.slug}` and provision it again"
        )

        def missing(kind, name, why, suggestion=repair, tenant=tenant, who=who):
            findings.append(Finding("missing", kind, name, tenant.pk, who, why, "", suggestion))

        try:
            own = driver if driver is not None else driver_for(tenant)
            replicas = {r.index: r for r in own.list_replicas(tenant.key)}
            has_network = own.find_network(tenant.key) is not None
        except Exception as exc:
            report.errors.append(f"workloads of {who} not checked: {exc}")
        else:
            count = tenant.plan.replicas
            for index in range(1, count + 1):
                name = replica_name(tenant.key, index)
                replica = replicas.get(index)
                if replica is None:
                    missing("container", name, f"replica {index} of {count} is gone")
                elif replica.state != "running":
                    missing("container", name, f"replica {index} of {count} is {replica.state}")
            if not has_network:
                missing("network", network_name(tenant.key), "network is gone")
        if not schema_exists(tenant.schema_name):
            missing("schema", tenant.schema_name, "schema is gone", rebuild)
        route = routes.get(tenant.pk)
        if route is None:
            missing("route", tenant.hostname, "route is gone")
        elif not route.enabled:
            missing("route", route.hostname, "route is switched off")
    return findings


# Fixing


def fix(report: Report, actor=None, driver=None) -> list[Finding]:
    """Remove the report's orphans; return those actually removed (one audit event each).

    Each orphan is judged again under its tenant's row lock just before it is
    removed, so a tenant that came back to life since the report (a retry)
    keeps its resources. Removing something already gone removes nothing and
    records nothing, so running this twice is harmless.
    """
    removed: list[Finding] = []
    gone: dict[str, set[str]] = {}  # container names removed, by key
    for finding in sorted(report.orphans, key=lambda f: FIX_ORDER.index(f.kind)):
        try:
            with transaction.atomic():
                tenant = None
                if finding.tenant_id is not None:
                    with contextlib.suppress(Tenant.DoesNotExist):
                        tenant = Tenant.objects.lock(pk=finding.tenant_id)
                if not still_orphan(tenant, finding):
                    continue
                if not _remove(finding, driver, gone):
                    continue
                record_event(
                    "reconcile.orphan_removed",
                    tenant=tenant,
                    actor=actor,
                    details={
                        "kind": finding.kind,
                        "name": finding.name,
                        "tenant_id": finding.tenant_id,
                        "why": finding.why,
                    },
                )
                removed.append(finding)
        except Exception:
            logger.exception("reconcile could not remove %s %s", finding.kind, finding.name)
    return removed


def still_orphan(tenant: Tenant | None, finding: Finding) -> bool:
    """The same judgement ``find_drift`` made, made again now."""
    match = _match_key(finding.key) if finding.key else None
    return bool(_reason(tenant, finding.kind, finding.name, slug=match["slug"] if match else None))


def _remove(finding: Finding, driver, gone: dict[str, set[str]]) -> bool:
    """Remove one orphan; False when it was already gone."""
    if finding.kind in ("container", "service", "network") and driver is None:
        driver = get_driver(finding.driver or None)
    if finding.kind == "service":
        if finding.key not in gone:
            gone[finding.key] = {r.name for r in driver.list_replicas(finding.key)}
        return bool(driver.remove_replicas(finding.key))
    if finding.kind == "container":
        if finding.key not in gone:
            # Every replica of one key has the same owner, so all are orphans.
            gone[finding.key] = {r.name for r in driver.list_replicas(finding.key)}
            driver.remove_replicas(finding.key)
        return finding.name in gone[finding.key]
    if finding.kind == "network":
        return driver.remove_network(finding.key)
    if finding.kind == "schema":
        return drop_schema(finding.name)
    if finding.kind == "route":
        deleted, _ = Route.objects.filter(tenant_id=finding.tenant_id).delete()
        return bool(deleted)
    return False


# The stored report: what the schedule and the command last saw


def latest() -> ReconcileReport | None:
    return ReconcileReport.objects.filter(pk=1).first()


def check(*, fix_orphans: bool = False, actor=None, driver=None) -> tuple[Report, list[Finding]]:
    """Find drift (and fix orphans), mark what is new since the stored report, store it.

    Returns the report as it stands after any fix, and what was removed. When
    something new appears a ``reconcile.drift_found`` event records it; when
    the findings change at all the tenants list is told, so its banner follows.
    """
    report = find_drift(driver)
    removed = fix(report, actor=actor, driver=driver) if fix_orphans else []
    if removed:
        report = find_drift(driver)
    with transaction.atomic():
        stored = ReconcileReport.objects.select_for_update().filter(pk=1).first()
        before = {f["id"] for f in (stored.findings if stored else [])}
        for finding in report.findings:
            finding.new = finding.id not in before
        now = [f.as_dict() for f in report.findings]
        ReconcileReport.objects.update_or_create(
            pk=1,
            defaults={
                "checked_at": report.checked_at,
                "findings": now,
                "errors": report.errors,
            },
        )
        if report.new:
            record_event(
                "reconcile.drift_found",
                actor=actor,
                details={"new": [f.id for f in report.new], "problems": len(report.findings)},
            )
        elif before != {f["id"] for f in now}:
            announce(["tenants"])
    return report, removed


def banner_context() -> dict:
    """What the list page's drift banner shows: the stored findings, summarised."""
    stored = latest()
    findings = stored.findings if stored else []
    counts: dict[str, int] = {}
    for finding in findings:
        label = f"{finding['problem']} {finding['kind']}"
        counts[label] = counts.get(label, 0) + 1
    return {
        "drift": {
            "count": len(findings),
            "summary": ", ".join(
                f"{n} {label}{'s' if n > 1 else ''}" for label, n in counts.items()
            ),
            "findings": findings[:10],
            "more": max(0, len(findings) - 10),
            "orphans": sum(1 for f in findings if f["problem"] == "orphan"),
            "missing": sum(1 for f in findings if f["problem"] == "missing"),
            "checked_at": stored.checked_at if stored else None,
            "fix_command": FIX_COMMAND,
        }
    }
