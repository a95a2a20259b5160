"""The management commands' contract: one clear line on stderr, non-zero exit, nothing changed."""

import json
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from provisioning import actions
from provisioning.models import AuditEvent, ProvisioningRun
from tenants.models import Tenant
from tests.conftest import ROOT, drive, subprocess_env

pytestmark = pytest.mark.django_db


def provision(*args):
    base = ["acme", "--org", "demo", "--plan", "free", "--admin-email", "a@example.com"]
    overrides = dict(zip(args[::2], args[1::2], strict=True))
    argv = []
    positional = overrides.pop("slug", base[0])
    argv.append(positional)
    options = {"--org": "demo", "--plan": "free", "--admin-email": "a@example.com"}
    options.update(overrides)
    for key, value in options.items():
        argv += [key, value]
    call_command("provision_tenant", *argv)


@pytest.mark.parametrize(
    "args, message",
    [
        (("slug", "Acme"), "slug: The slug must be lower-case"),
        (("slug", "ab"), "slug: The slug must be 3 to 30"),
        (("slug", "admin"), "reserved"),
        (("--org", "de_mo"), "org: The org may use only"),
        (("--plan", "gold"), "plan: Unknown plan 'gold'"),
        (("--admin-email", "nope"), "admin_email: 'nope' is not a valid email"),
    ],
)
def test_provision_refuses_bad_input_and_creates_nothing(plans, args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        provision(*args)
    assert not Tenant.objects.exists()
    assert not AuditEvent.objects.exists()


def test_provision_refuses_a_taken_slug(plans):
    provision()
    with pytest.raises(CommandError, match="taken"):
        provision("--org", "other")
    assert Tenant.objects.count() == 1


def test_faults_are_refused_where_they_are_not_enabled(plans, settings):
    settings.PROVISIONING_FAULTS_ENABLED = False
    with pytest.raises(CommandError, match="PROVISIONING_FAULTS_ENABLED=1"):
        provision("--fault", "deploy_workloads:permanent")
    assert not Tenant.objects.exists()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("deploy_workloads", "expected STEP:KIND"),
        ("nosuch:transient", "unknown step"),
        ("validate:explode", "unknown kind"),
        ("validate:transient:x", "whole number"),
        ("validate:transient:0", "whole number"),
        ("validate:crash_at", "crash_at needs a point: before_effect, after_effect"),
        ("validate:crash_at:during_effect", "crash_at needs a point"),
        ("validate:crash_at:3", "crash_at needs a point"),
    ],
)
def test_bad_fault_specs_are_refused(plans, faults_enabled, spec, message):
    with pytest.raises(CommandError, match=message):
        provision("--fault", spec)
    assert not Tenant.objects.exists()


def test_a_crash_point_is_recorded_on_the_run_and_in_the_audit_log(plans, faults_enabled):
    provision("--fault", "deploy_workloads:crash_at:after_effect")
    tenant = Tenant.objects.get()
    run = tenant.runs.get()
    assert run.faults == [
        {"step": "deploy_workloads", "kind": "crash_at", "n": "after_effect", "used": 0}
    ]
    created = AuditEvent.objects.get(tenant=tenant, type="tenant.created")
    assert created.details["faults"] == ["deploy_workloads:crash_at:after_effect"]


@pytest.mark.parametrize(
    "command", ["tenant_status", "cancel_provisioning", "reset_provisioning", "retry_provisioning",
                "decommission_tenant"],
)  # fmt: skip
def test_an_unknown_tenant_is_one_clear_error(plans, command):
    with pytest.raises(CommandError, match="no tenant with slug 'ghost'"):
        call_command(command, "ghost")


def test_a_malformed_slug_argument_is_refused(plans):
    with pytest.raises(CommandError, match="not a valid slug"):
        call_command("tenant_status", "../etc")


def test_operations_in_the_wrong_state_are_refused(plans):
    provision()
    tenant = Tenant.objects.get()
    with pytest.raises(CommandError, match="cancel it first"):
        call_command("decommission_tenant", "acme")
    with pytest.raises(CommandError, match="already provisioning"):
        call_command("retry_provisioning", "acme")
    events = AuditEvent.objects.count()
    ProvisioningRun.objects.update(status="succeeded")
    Tenant.objects.update(state="active")
    with pytest.raises(CommandError, match="only a tenant that is provisioning can be cancelled"):
        call_command("cancel_provisioning", "acme")
    with pytest.raises(CommandError, match="only a failed tenant can be reset"):
        call_command("reset_provisioning", "acme")
    assert AuditEvent.objects.count() == events
    tenant.refresh_from_db()
    assert tenant.state == "active"


@pytest.mark.django_db(transaction=True)
def test_tenant_status_json_has_the_contract_fields(plans, capsys):
    provision()
    capsys.readouterr()
    call_command("tenant_status", "acme", "--json")
    status = json.loads(capsys.readouterr().out)
    assert set(status) == {
        "slug", "org", "plan", "state", "url", "attempt", "current_step", "failed_step",
        "error", "cancelled", "created_at", "activated_at", "waiting", "steps", "workloads",
    }  # fmt: skip
    assert status["url"] == "http://acme-demo.localhost:8000/"
    assert set(status["steps"][0]) == {
        "id", "label", "position", "status", "attempts", "started_at", "finished_at",
        "duration_s", "error", "progress",
    }  # fmt: skip
    drive(Tenant.objects.get())
    call_command("tenant_status", "acme", "--json")
    status = json.loads(capsys.readouterr().out)
    assert status["activated_at"].endswith("Z")
    actions.decommission_tenant(Tenant.objects.get())
    drive(Tenant.objects.get())


@pytest.mark.django_db(transaction=True)
def test_a_command_error_is_one_line_on_stderr_with_a_non_zero_exit(plans):
    done = subprocess.run(
        [sys.executable, "manage.py", "provision_tenant", "Bad_Slug", "--org", "demo",
         "--plan", "free", "--admin-email", "a@example.com"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["CommandError: slug: The slug may use only a-z, 0-9 and '-'."]
    assert done.stdout == ""
