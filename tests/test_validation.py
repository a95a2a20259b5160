import pytest
from django.core.exceptions import ValidationError

from provisioning import actions
from provisioning.models import AuditEvent, ProvisioningRun
from tenants.models import Tenant
from tenants.validation import first_error, validate_request

pytestmark = pytest.mark.django_db


def errors_of(**overrides) -> dict:
    request = {"slug": "acme", "org": "demo", "plan": "free", "admin_email": "a@example.com"}
    request.update(overrides)
    with pytest.raises(ValidationError) as caught:
        validate_request(**request)
    return {field: errs[0].messages[0] for field, errs in caught.value.error_dict.items()}


@pytest.mark.parametrize(
    "slug, fragment",
    [
        ("", "Enter a slug"),
        ("ab", "3 to 30"),
        ("a" * 31, "3 to 30"),
        ("-acme", "start or end"),
        ("acme-", "start or end"),
        ("ac_me", "only a-z"),
        ("ac me", "only a-z"),
        ("Acme", "lower-case"),
        ("admin", "reserved"),
        ("a\u00e9cme", "only a-z"),
    ],
)
def test_it_refuses_a_bad_slug_with_a_clear_message(plans, slug, fragment):
    assert fragment in errors_of(slug=slug)["slug"]


def test_it_refuses_a_bad_org(plans):
    assert "start or end" in errors_of(org="-demo")["org"]


def test_it_refuses_an_unknown_plan_and_names_the_known_ones(plans):
    message = errors_of(plan="gold")["plan"]
    assert "gold" in message and "free" in message and "enterprise" in message


def test_it_refuses_a_malformed_email(plans):
    assert "not a valid email" in errors_of(admin_email="not-an-email")["admin_email"]


def test_it_refuses_a_slug_held_by_a_live_tenant(plans):
    actions.create_tenant(slug="acme", org="demo", plan="free", admin_email="a@example.com")
    assert "taken" in errors_of(slug="acme")["slug"]


def test_a_decommissioned_tenant_frees_its_slug(plans):
    tenant = actions.create_tenant(slug="acme", org="demo", plan="free", admin_email="a@x.io")
    Tenant.objects.filter(pk=tenant.pk).update(state=Tenant.State.DECOMMISSIONED)
    assert validate_request("acme", "demo", "free", "a@x.io").slug == "acme"


def test_a_viewer_may_not_provision(viewer):
    assert "may watch" in errors_of(user=viewer)["__all__"]


def test_an_operator_may_provision(operator):
    assert validate_request("acme", "demo", "pro", "A@Example.com", user=operator).admin_email == (
        "a@example.com"
    )


def test_a_refused_request_creates_nothing(plans):
    with pytest.raises(ValidationError):
        actions.create_tenant(slug="ab", org="demo", plan="free", admin_email="a@example.com")
    assert not Tenant.objects.exists()
    assert not ProvisioningRun.objects.exists()
    assert not AuditEvent.objects.exists()


def test_first_error_is_one_line_naming_the_field(plans):
    with pytest.raises(ValidationError) as caught:
        validate_request("ab", "demo", "free", "a@example.com")
    assert first_error(caught.value).startswith("slug: ")


def test_the_database_refuses_two_live_tenants_with_one_slug(plans):
    from django.db import IntegrityError

    plan = plans["free"]
    Tenant.objects.create(slug="acme", org="demo", plan=plan, admin_email="a@x.io")
    with pytest.raises(IntegrityError):
        Tenant.objects.create(slug="acme", org="other", plan=plan, admin_email="b@x.io")
