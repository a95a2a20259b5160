"""One-time sign-in links for a tenant's first admin (docs/SIGNIN.md).

A link is ``<SITE_URL>/signin/<nonce>/#<token>``. The nonce names the link and
grants nothing; the token is HMAC(SECRET_KEY, tenant and nonce). The database
keeps the nonce and the token's SHA-256 only, so the welcome step can rebuild
the link while a copy of the database alone cannot sign anybody in. The token
rides in the fragment, which browsers never send: it reaches the console only
in the body of the POST the sign-in page makes, so no access log, proxy log or
Referer header ever holds it, and a mail scanner that fetches the link cannot
use it up.

``redeem`` is the one action that changes a link: it marks the token used with
one conditional UPDATE and records ``tenant.signin.redeemed``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from provisioning.audit import record_event
from provisioning.models import TenantIdentity, WelcomeEmail

# The welcome email that carries the link: when it was claimed for sending is
# when the link was issued, so the validity window starts when the admin can
# first hold the link (a run resumed days after its identity step still sends
# a link good for SIGNIN_TOKEN_HOURS), and a link never sent cannot be used.
LINK_EMAIL = "console"

_NONCE = re.compile(r"[0-9a-f]{32}")
_TOKEN = re.compile(r"[0-9a-f]{64}")


def new_nonce() -> str:
    return secrets.token_hex(16)


def make_token(tenant_id: int, nonce: str) -> str:
    message = f"signin:{tenant_id}:{nonce}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def signin_url(tenant, identity) -> str:
    path = reverse("signin", args=[identity.token_nonce])
    return f"{settings.SITE_URL.rstrip('/')}{path}#{make_token(tenant.pk, identity.token_nonce)}"


@dataclass(frozen=True)
class Reason:
    """Why a link cannot be used; the page shows ``title`` and ``message`` with ``status``."""

    status: int
    title: str
    message: str


class Refused(Exception):
    def __init__(self, reason: Reason):
        super().__init__(reason.title)
        self.reason = reason


NOT_FOUND = Reason(
    404,
    "This sign-in link is not valid",
    "No sign-in link matches this address. Open the link from your welcome email again, "
    "whole; if it still fails, ask the platform's operators for help.",
)
INCOMPLETE = Reason(
    400,
    "This sign-in link is incomplete",
    "The part of the link after '#' is missing or damaged. Open the link from your welcome "
    "email again, whole (some mail programs cut it: copy and paste it instead).",
)
WRONG_TOKEN = Reason(
    403,
    "This sign-in link is not valid",
    "The link does not match the one we sent. Open the link from your welcome email again, whole.",
)
USED = Reason(
    410,
    "This sign-in link has already been used",
    "A sign-in link works once. If it was not you who used it, tell the platform's "
    "operators at once.",
)
EXPIRED = Reason(
    410,
    "This sign-in link has expired",
    "A sign-in link works for a limited time after it is sent. Ask the platform's "
    "operators for a new one.",
)


def issued_at(identity: TenantIdentity) -> datetime | None:
    return (
        WelcomeEmail.objects.filter(tenant_id=identity.tenant_id, kind=LINK_EMAIL)
        .values_list("claimed_at", flat=True)
        .first()
    )


def expires_at(identity: TenantIdentity) -> datetime | None:
    issued = issued_at(identity)
    return issued + timedelta(hours=settings.SIGNIN_TOKEN_HOURS) if issued else None


def find(nonce: str) -> TenantIdentity:
    """The link named by ``nonce``; its shape is checked before it reaches the database."""
    identity = None
    if _NONCE.fullmatch(nonce):
        identity = TenantIdentity.objects.select_related("tenant").filter(token_nonce=nonce).first()
    if identity is None:
        raise Refused(NOT_FOUND)
    return identity


def refusal(identity: TenantIdentity) -> Reason | None:
    """Why this link cannot be used now, or None: asked by the page and by ``redeem``."""
    if identity.token_used_at is not None:
        return USED
    expiry = expires_at(identity)
    if expiry is None:
        return NOT_FOUND  # never sent: nobody should hold it
    if timezone.now() >= expiry:
        return EXPIRED
    return None


def redeem(nonce: str, token: str) -> TenantIdentity:
    """Use the link once: mark it used and record the sign-in, or raise Refused.

    Nothing changes when it is refused.
    """
    if not _TOKEN.fullmatch(token):
        raise Refused(INCOMPLETE)
    identity = find(nonce)
    digest = hash_token(token)
    # Constant time: the answer's timing says nothing about how much matched.
    if not hmac.compare_digest(digest, identity.token_hash):
        raise Refused(WRONG_TOKEN)
    reason = refusal(identity)
    if reason is not None:
        raise Refused(reason)
    now = timezone.now()
    with transaction.atomic():
        # Two tabs (or an attacker racing the admin) may POST at once: only the
        # UPDATE that still finds the token unused wins.
        won = TenantIdentity.objects.filter(
            pk=identity.pk, token_hash=digest, token_used_at__isnull=True
        ).update(token_used_at=now)
        if won != 1:
            raise Refused(USED)
        record_event(
            "tenant.signin.redeemed",
            tenant=identity.tenant,
            details={"organization": identity.organization, "admin_email": identity.admin_email},
        )
    identity.token_used_at = now
    return identity
