"""API tokens: issue one (shown once), and find the live token behind a bearer value."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from console.models import ApiToken

PREFIX = "tpc_"
# A token's use is recorded at most this often: a busy pipeline's requests
# should not each rewrite the token's row.
LAST_USED_EVERY = timedelta(seconds=5)
MAX_LENGTH = 100  # far above a real token; longer values are not looked up


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def issue_token(user, name: str) -> tuple[ApiToken, str]:
    """A new token for ``user``: the row (holding only its digest) and the token itself."""
    raw = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name, prefix=raw[: len(PREFIX) + 6], digest=digest(raw)
    )
    return token, raw


def authenticate(raw: str) -> ApiToken | None:
    """The live token ``raw`` names (not revoked, its user active), its use recorded; else None."""
    if not raw or len(raw) > MAX_LENGTH or not raw.isascii() or not raw.isprintable():
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(digest=digest(raw), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_EVERY)
        ).update(last_used_at=now)
        token.last_used_at = now
    return token
