from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from provisioning.models import TenantIdentity, WelcomeEmail
from provisioning.signin import LINK_EMAIL, signin_url
from provisioning.steps.base import Step


def messages(tenant, identity) -> list[tuple[str, str, str]]:
    """(kind, subject, body) of the three welcome emails."""
    hours = settings.SIGNIN_TOKEN_HOURS
    return [
        (
            "welcome",
            f"Welcome to your workspace {tenant.slug}-{tenant.org}",
            f"Hello,\n\nThe workspace {tenant.slug} for {tenant.org} is ready on the "
            f"{tenant.plan.display_name} plan.\n\nIt lives at {tenant.url}\n",
        ),
        (
            LINK_EMAIL,
            "Your admin console and one-time sign-in link",
            f"Open your admin console at {tenant.url}\n\n"
            f"Sign in as the first admin of {identity.organization} with this link. It works "
            f"once, within {hours:g} hours of this email:\n{signin_url(tenant, identity)}\n",
        ),
        (
            "onboarding",
            "Getting started",
            "Three things to do first:\n1. Sign in and set a password.\n"
            "2. Invite your team.\n3. Open the 'Getting started' project.\n",
        ),
    ]


class SendWelcomeEmails(Step):
    id = "send_welcome_emails"
    label = "Send welcome emails"
    attempts = 3
    seconds = 30
    best_effort = True

    def run(self, ctx) -> dict:
        tenant = ctx.tenant
        identity = TenantIdentity.objects.get(tenant=tenant)
        sent, skipped = [], []
        for kind, subject, body in messages(tenant, identity):
            # Claim before sending: a retry or a resumed run finds the claim and
            # never sends the same email twice (at most once, by design).
            claim, created = WelcomeEmail.objects.get_or_create(
                tenant=tenant, kind=kind, defaults={"to": identity.admin_email}
            )
            if not created:
                skipped.append(kind)
                ctx.log(
                    f"{kind} email already {'sent' if claim.sent_at else 'claimed'}; not re-sent"
                )
                continue
            ctx.before_effect()  # fenced, and the step's start on disk, before it leaves
            try:
                send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [identity.admin_email])
            except Exception:
                claim.delete()  # not sent: let the next attempt try it
                raise
            WelcomeEmail.objects.filter(pk=claim.pk).update(sent_at=timezone.now())
            sent.append(kind)
            ctx.log(f"sent {kind} email to {identity.admin_email}")
        return {"sent": sent, "already_sent": skipped}
