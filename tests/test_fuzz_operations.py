"""A stateful fuzz of operator actions against real PostgreSQL and real workers.

Hypothesis drives a ``RuleBasedStateMachine`` beside a real qcluster (two
workers, the Docker driver). Its rules interleave what operators do (create,
cancel, reset, retry with and without force, decommission, repair) with
what goes wrong (a worker killed with SIGKILL while it holds a run, injected
transient faults, hangs and crash points, a worker's PostgreSQL session
ended with ``pg_terminate_backend``, a replica removed behind the console's
back) and with pauses that let the workers get on.

After every rule, from one consistent snapshot (REPEATABLE READ):

- each tenant's state moved only along the allowed transitions
  (provisioning -> active | failed; failed -> provisioning;
  active | failed -> decommissioning -> decommissioned; a failed
  decommission leaves it decommissioning);
- no tenant has more than one live run;
- every step that started ended succeeded, compensated or skipped (or a
  best-effort step failed), unless its run is still live;
- audit ``seq`` is gapless within each transaction, and transactions'
  ranges do not interleave (with FUZZ_AUDIT_SEQ=1: an open finding);
- a refused action changed nothing;
- the status JSON agrees with the rows.

At the end of each example, once every run has ended: every resource exists
exactly once for an active tenant and not at all for a failed or
decommissioned one, the audit log agrees with the rows
(tests.crash_support), and ``reconcile`` finds no orphan and nothing
missing.

Examples: ``FUZZ_EXAMPLES`` (default 5 in the suite, under a minute). A long
run by hand: ``FUZZ_EXAMPLES=2000 flock /tmp/heavy.lock .venv/bin/pytest -p
no:xdist tests/test_fuzz_operations.py -s``. What it found is in
docs/RELIABILITY.md, each as a plain regression test.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import time
from collections import Counter

import psutil
import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from provisioning import actions, faults, reconcile
from provisioning.drivers import clear_cache, get_driver
from provisioning.models import AuditEvent, ProvisioningRun, StepRun
from provisioning.status import tenant_status
from provisioning.steps import BY_ID, STEP_IDS
from tenants.models import Tenant
from tests.conftest import wait_for
from tests.crash_support import audit_problems, resource_problems, resources
from tests.docker_support import require_docker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
# The audit seq invariant is broken today (an open finding of this fuzz, in
# docs/RELIABILITY.md, pinned by tests/test_audit.py's strict xfail): checked
# only with FUZZ_AUDIT_SEQ=1, so it does not hide what else the fuzz finds.
CHECK_SEQ = os.environ.get("FUZZ_AUDIT_SEQ") == "1"
SETTLE_SECONDS = 90
S = Tenant.State
# Where each state may go next; the fuzz sees states between rules, so it
# checks reachability along these edges.
NEXT = {
    S.PROVISIONING: {S.ACTIVE, S.FAILED},
    S.FAILED: {S.PROVISIONING, S.DECOMMISSIONING},
    S.ACTIVE: {S.DECOMMISSIONING},
    S.DECOMMISSIONING: {S.DECOMMISSIONED},
    S.DECOMMISSIONED: set(),
}
ENDED_OK = {"succeeded", "compensated", "skipped", "pending"}
_slugs = itertools.count(1)
# What the fuzz did, for its summary line (and docs/RELIABILITY.md).
TALLY: Counter = Counter()


def reachable(start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in NEXT[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def fault_specs() -> st.SearchStrategy:
    steps = st.sampled_from(STEP_IDS)
    return st.one_of(
        st.just([]),
        st.builds(lambda s, n: [faults.parse(f"{s}:transient:{n}")], steps, st.integers(1, 2)),
        st.builds(lambda s: [faults.parse(f"{s}:hang:1")], steps),
        st.builds(lambda s: [faults.parse(f"{s}:permanent")], steps),
        st.builds(
            lambda s, p: [faults.crash_at(s, p)], steps, st.sampled_from(faults.CRASH_POINTS)
        ),
    )


class Cluster:
    """The qcluster the machine runs beside (set by the test before it runs)."""

    proc = None

    @classmethod
    def workers(cls) -> set[int]:
        try:
            return {p.pid for p in psutil.Process(cls.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()


def snapshot_of_operator_changes(tenant_id: int) -> tuple:
    """What only an operator's action changes (workers change states, leases, steps)."""
    runs = ProvisioningRun.objects.filter(tenant_id=tenant_id)
    latest = runs.order_by("-attempt", "-pk").values("pk", "cancel_requested", "reset_at").first()
    by_people = AuditEvent.objects.filter(tenant_id=tenant_id).exclude(actor="system").count()
    return runs.count(), latest, by_people


class OperatorActions(RuleBasedStateMachine):
    tenants = Bundle("tenants")

    def __init__(self):
        super().__init__()
        self.mine: list[int] = []
        self.seen: dict[int, str] = {}

    # ------------------------------------------------------------ operators

    @rule(target=tenants, plan=st.sampled_from(["free", "pro"]), injected=fault_specs())
    def create(self, plan, injected):
        tenant = actions.create_tenant(
            slug=f"fz{next(_slugs)}",
            org="fuzz",
            plan=plan,
            admin_email="admin@example.com",
            faults=injected,
        )
        self.mine.append(tenant.pk)
        self.seen[tenant.pk] = tenant.state
        TALLY["create"] += 1
        TALLY.update(f"fault {fault['kind']}" for fault in injected)
        return tenant.pk

    def _act(self, tenant_id: int, action, **kwargs) -> None:
        tenant = Tenant.objects.get(pk=tenant_id)
        before = snapshot_of_operator_changes(tenant_id)
        try:
            with noted():
                action(tenant, **kwargs)
            TALLY[action.__name__] += 1
        except actions.ActionError:
            TALLY[f"{action.__name__} refused"] += 1
            after = snapshot_of_operator_changes(tenant_id)
            assert after == before, f"a refused {action.__name__} changed {before} -> {after}"

    @rule(tenant=tenants)
    def cancel(self, tenant):
        self._act(tenant, actions.request_cancel, reason="fuzz")

    @rule(tenant=tenants)
    def reset(self, tenant):
        self._act(tenant, actions.reset_provisioning, reason="fuzz")

    @rule(tenant=tenants, force=st.booleans())
    def retry(self, tenant, force):
        self._act(tenant, actions.retry_provisioning, force=force, reason="fuzz")

    @rule(tenant=tenants)
    def decommission(self, tenant):
        self._act(tenant, actions.decommission_tenant, reason="fuzz")

    @rule(tenant=tenants)
    def repair(self, tenant):
        self._act(tenant, actions.repair_tenant, reason="fuzz")

    # ------------------------------------------------------------ what goes wrong

    # Which one is an index drawn up front: what exists is the live system's
    # (drawing from it would make Hypothesis's data depend on it).
    @rule(pick=st.integers(0, 1000))
    def kill_a_worker_holding_a_run(self, pick):
        """SIGKILL the worker process that holds a live run's lease, if it is ours."""
        owners = ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE).exclude(
            lease_owner=""
        )
        ours = Cluster.workers()
        pids = sorted(
            {int(o.split(":")[1]) for o in owners.values_list("lease_owner", flat=True)} & ours
        )
        if pids:
            os.kill(pids[pick % len(pids)], signal.SIGKILL)
            TALLY["worker killed"] += 1

    @rule(pick=st.integers(0, 1000))
    def end_a_workers_database_session(self, pick):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend' ORDER BY pid"
            )
            pids = [row[0] for row in cursor.fetchall()]
            if pids:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pids[pick % len(pids)]])
                TALLY["session ended"] += 1

    @rule(tenant=tenants)
    def remove_a_replica_behind_its_back(self, tenant):
        tenant = Tenant.objects.get(pk=tenant)
        if tenant.state == S.ACTIVE:
            TALLY["replica removed"] += get_driver().remove_replica(tenant.key, 1)

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.5]))
    def let_the_workers_work(self, seconds):
        time.sleep(seconds)

    @rule(tenant=tenants)
    def wait_for_its_run_to_end(self, tenant):
        """So that retry, reset, decommission and repair meet ended runs too."""
        live = ProvisioningRun.objects.filter(tenant_id=tenant, status__in=ProvisioningRun.LIVE)
        deadline = time.monotonic() + 20
        while live.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    # ------------------------------------------------------------ invariants

    @invariant()
    def rows_agree(self):
        TALLY["checks"] += 1
        with noted(), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            check_snapshot(self.mine, self.seen)

    def teardown(self):
        TALLY["examples"] += 1
        try:
            with noted():
                settle()
                check_snapshot(self.mine, self.seen)
                check_settled(self.mine)
        finally:
            connection.close()  # a session the fuzz ended is not reused


# The first failures as they happened: against live workers Hypothesis's
# replay of a failing example may not fail again (it then reports a Flaky
# error, not this one), so the test prints these itself.
FOUND: list[str] = []


@contextlib.contextmanager
def noted():
    try:
        yield
    except actions.ActionError:
        raise  # a refusal, which the rule checks
    except Exception as exc:
        if len(FOUND) < 3:
            FOUND.append(f"{type(exc).__name__}: {exc}")
        raise


def check_snapshot(mine: list[int], seen: dict[int, str]) -> None:
    tenants = {t.pk: t for t in Tenant.objects.filter(pk__in=mine).select_related("plan")}
    for pk, tenant in tenants.items():
        assert tenant.state in reachable(seen[pk]), f"{tenant.slug}: {seen[pk]} -> {tenant.state}"
        seen[pk] = tenant.state
    live = ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE)
    per_tenant = list(live.values_list("tenant_id", flat=True))
    doubled = {t for t in per_tenant if per_tenant.count(t) > 1}
    assert not doubled, f"tenants with two live runs: {doubled}"
    loose = (
        StepRun.objects.exclude(run__status__in=ProvisioningRun.LIVE)
        .exclude(status__in=ENDED_OK)
        .filter(run__tenant_id__in=mine)
        .values_list("run__tenant__slug", "run_id", "step_id", "status")
    )
    loose = [row for row in loose if not (row[3] == "failed" and BY_ID[row[2]].best_effort)]
    assert not loose, f"steps of ended runs left unfinished: {loose}"
    if CHECK_SEQ:
        check_audit_seq()
    for tenant in tenants.values():
        status = tenant_status(tenant)
        run = actions.latest_run(tenant)
        assert status["state"] == tenant.state
        if run is not None:
            assert status["attempt"] == run.attempt
            if run.kind == ProvisioningRun.Kind.PROVISION:
                rows = {s.step_id: s.status for s in run.steps.all()}
                shown = {s["id"]: s["status"] for s in status["steps"]}
                assert shown == rows, f"{tenant.slug}: status JSON {shown}, rows {rows}"


def story(tenant: Tenant) -> str:
    """The tenant's runs and events, for a failure's message."""
    lines = []
    for run in tenant.runs.order_by("pk"):
        steps = " ".join(f"{s.step_id}={s.status}/{s.attempts}" for s in run.steps.all())
        lines.append(
            f"run {run.pk} {run.kind} #{run.attempt} {run.status} cancelled={run.cancelled} "
            f"reset={bool(run.reset_at)} resumes={run.resumes} error={run.error!r}\n  {steps}"
        )
    for event in AuditEvent.objects.filter(tenant=tenant).order_by("seq"):
        lines.append(f"  #{event.seq} run {event.run_id} {event.type} {event.details}")
    return "\n".join(lines)


def check_audit_seq() -> None:
    """Each transaction's events have consecutive seqs, and no two transactions interleave.

    ``xmin`` names the transaction (or savepoint) that inserted a row; the
    audit table is append-only, so it is the writer's.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xmin::text, min(seq), max(seq), count(*) FROM provisioning_auditevent "
            "GROUP BY xmin ORDER BY min(seq)"
        )
        groups = cursor.fetchall()
    previous = None
    for xid, low, high, count in groups:
        assert high - low + 1 == count, f"transaction {xid}: seqs {low}..{high} hold {count} events"
        if previous is not None:
            assert low > previous[2], f"transactions {previous[0]} and {xid} interleave their seqs"
        previous = (xid, low, high)


def settle() -> None:
    def ended():
        return not ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE).exists()

    wait_for(ended, timeout=SETTLE_SECONDS, poll=0.2, message="every run to end")


def repair_now(tenant: Tenant) -> None:
    """Repair, after the one already under way (the repair loop's own) if there is one."""
    deadline = time.monotonic() + 20
    while True:
        try:
            actions.repair_tenant(tenant, reason="fuzz settle")
            return
        except actions.ActionError as refused:
            if "under way" not in str(refused) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def check_settled(mine: list[int]) -> None:
    managed = get_driver().list_managed()
    for tenant in Tenant.objects.filter(pk__in=mine).select_related("plan"):
        if tenant.state == S.ACTIVE:
            # What was removed behind its back is the repair loop's to mend.
            repair_now(tenant)
            managed = get_driver().list_managed()
        sent = StepRun.objects.filter(
            run__tenant=tenant, step_id="send_welcome_emails", status="succeeded"
        ).exists()
        wrong = resource_problems(tenant, resources(tenant, managed), emails=3 if sent else 0)
        for run in tenant.runs.all():
            wrong += audit_problems(run)
        assert not wrong, f"{tenant.slug} ({tenant.state}): {wrong}\n{story(tenant)}"
    report = reconcile.find_drift()
    assert report.errors == [], report.errors
    # Only this example's tenants: earlier tests in this process may leave
    # theirs (ids do not repeat within a test session).
    findings = [f.__dict__ for f in report.findings if f.tenant_id in mine]
    assert findings == [], findings


def test_operator_actions_and_failures_keep_every_invariant(plans, settings_fixture):
    TALLY.clear()
    FOUND.clear()
    began = time.monotonic()
    try:
        _run()
    finally:
        took = time.monotonic() - began
        print(f"\nfuzz: {took:.0f} s, " + ", ".join(f"{k} {v}" for k, v in sorted(TALLY.items())))
        for n, found in enumerate(FOUND, 1):
            print(f"\nfound {n}: {found}")


def _run():
    run_state_machine_as_test(
        OperatorActions,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=int(os.environ.get("FUZZ_STEPS", "10")),
            deadline=None,
            # Against live workers a replay is not the same run: shrinking
            # (FUZZ_SHRINK=1) often ends Flaky, so by default the first
            # failure is reported as it happened, with its steps.
            phases=[Phase.explicit, Phase.generate]
            + ([Phase.shrink] if os.environ.get("FUZZ_SHRINK") == "1" else []),
            suppress_health_check=list(HealthCheck),
            database=None,
            print_blob=True,
        ),
    )


@pytest.fixture
def settings_fixture(settings, cluster_factory):
    require_docker()
    settings.WORKLOAD_DRIVER = "docker"
    settings.PROVISIONING_FAULTS_ENABLED = True
    clear_cache()
    cluster = cluster_factory(
        "fuzz",
        WORKLOAD_DRIVER="docker",
        PROVISIONING_LEASE_SECONDS="3",
        PROVISIONING_HEARTBEAT_SECONDS="1",
        PROVISIONING_BACKOFF_BASE="0.05",
        PROVISIONING_BACKOFF_MAX="0.2",
        DB_IDLE_IN_TRANSACTION_SECONDS="2",
    )
    Cluster.proc = cluster.proc
    random.seed(0)
    yield settings
    Cluster.proc = None
