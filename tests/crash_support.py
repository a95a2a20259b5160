"""What a run left behind, counted from the outside: for the crash matrix and the fuzz.

``resources(tenant)`` counts every thing a saga makes for a tenant where it
lives: containers and networks on the engine (by the tenant's key label, so
two of one name would both count), its schema (by the comment that marks it
ours), its identity and route rows, its welcome-email claims. ``history``
reads the audit log of one run, and ``audit_problems`` says where the log
and the rows disagree.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from provisioning.drivers import get_driver
from provisioning.drivers.base import LABEL_KEY
from provisioning.models import AuditEvent, ProvisioningRun, Route, TenantIdentity, WelcomeEmail
from provisioning.steps import STEP_IDS
from provisioning.steps.storage import managed_schemas
from tenants.models import Tenant

# Everything an active tenant has, once each (its plan's replicas aside).
ONCE = ("network", "schema", "identity", "route")


def resources(tenant: Tenant, managed: dict | None = None) -> Counter:
    """How many of each resource the tenant has right now."""
    managed = managed if managed is not None else get_driver().list_managed()
    found = Counter()
    found["container"] = sum(
        1 for r in managed["replicas"] if (r.labels or {}).get(LABEL_KEY) == tenant.key
    )
    found["network"] = sum(
        1 for n in managed["networks"] if (n.labels or {}).get(LABEL_KEY) == tenant.key
    )
    found["schema"] = sum(1 for tid in managed_schemas().values() if tid == tenant.pk)
    found["identity"] = TenantIdentity.objects.filter(tenant=tenant).count()
    found["route"] = Route.objects.filter(tenant=tenant).count()
    found["email"] = WelcomeEmail.objects.filter(tenant=tenant).count()
    return found


def resource_problems(tenant: Tenant, found: Counter, *, emails: int = 3) -> list[str]:
    """What is wrong with ``found`` for the tenant's state: all once when active, none when
    failed or decommissioned. ``emails``: how many welcome emails an active one has (the
    step is best effort: none when it gave up)."""
    problems = []
    if tenant.state == Tenant.State.ACTIVE:
        want = {**dict.fromkeys(ONCE, 1), "container": tenant.plan.replicas, "email": emails}
        for kind, count in want.items():
            if found[kind] != count:
                problems.append(f"{kind} x{found[kind]}, want {count}")
    elif tenant.state in (Tenant.State.FAILED, Tenant.State.DECOMMISSIONED):
        for kind in (*ONCE, "container"):
            if found[kind]:
                problems.append(f"{kind} x{found[kind]} left on a {tenant.state} tenant")
    return problems


@dataclass
class History:
    """One run's audit events: which steps started, finished and were undone, in order."""

    events: list[tuple[int, str, str]]  # (seq, type, step or "")

    def count(self, kind: str, step: str) -> int:
        return sum(1 for _, t, s in self.events if t.endswith(kind) and s == step)

    def types(self) -> list[str]:
        return [t for _, t, _ in self.events]


def history(run: ProvisioningRun) -> History:
    rows = AuditEvent.objects.filter(run=run).order_by("seq").values_list("seq", "type", "details")
    return History([(seq, kind, (details or {}).get("step", "")) for seq, kind, details in rows])


def audit_problems(run: ProvisioningRun) -> list[str]:
    """Where the run's audit log and its rows disagree, or a finished step ran again.

    - each step recorded succeeded has exactly one `step_completed` event, and
      no `step_started` after it (a finished step never runs again);
    - each step recorded compensated has exactly one `compensated` event;
    - a run that ended has exactly one ending event, and it is its last
      provisioning event; seq only grows.
    """
    problems = []
    log = history(run)
    seqs = [seq for seq, _, _ in log.events]
    if seqs != sorted(seqs) or len(set(seqs)) != len(seqs):
        problems.append("seq not strictly increasing")
    steps = {s.step_id: s for s in run.steps.all()}
    for step_id in STEP_IDS:
        step = steps.get(step_id)
        if step is None:
            continue
        completed = [
            seq for seq, t, s in log.events if t.endswith(".step_completed") and s == step_id
        ]
        if step.status == "succeeded" and len(completed) != 1:
            problems.append(f"{step_id}: succeeded with {len(completed)} step_completed events")
        # A step undone later, or a best-effort one that gave up, has one too.
        if completed and step.status not in ("succeeded", "compensated", "failed"):
            problems.append(f"{step_id}: {step.status} but has a step_completed event")
        if completed:
            later = [
                seq
                for seq, t, s in log.events
                if t.endswith(".step_started") and s == step_id and seq > completed[0]
            ]
            if later:
                problems.append(f"{step_id}: started again after it succeeded")
        undone = log.count(".compensated", step_id)
        if step.status == "compensated" and undone != 1:
            problems.append(f"{step_id}: compensated with {undone} compensated events")
        if step.status != "compensated" and undone:
            problems.append(f"{step_id}: {step.status} but has a compensated event")
    if not run.is_live:
        if run.kind == ProvisioningRun.Kind.DECOMMISSION:
            ends = ["tenant.decommission.completed"] if run.status == "succeeded" else []
        else:
            failed = "cancelled" if run.cancelled else "failed"
            ends = {
                "succeeded": ["tenant.provisioning.completed"],
                "failed": [f"tenant.provisioning.{failed}"],
            }.get(run.status, [])
        found = [t for t in log.types() if t in _ENDINGS]
        if run.reset_at:
            # Reset after it failed, or reset in flight (its worker had died),
            # which then undid what it made and failed.
            if sorted(found) != sorted([*ends, "tenant.provisioning.reset"]):
                problems.append(f"run reset: ending events {found}, want {ends} + reset")
        elif found != ends:
            problems.append(f"run {run.status}: ending events {found}, want {ends}")
    return problems


_ENDINGS = {
    "tenant.provisioning.completed",
    "tenant.provisioning.reset",
    "tenant.provisioning.failed",
    "tenant.provisioning.cancelled",
    "tenant.decommission.completed",
}
