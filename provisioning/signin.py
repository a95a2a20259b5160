"""One-time sign-in links for a tenant's first admin.

The token is HMAC(SECRET_KEY, tenant and nonce); the database keeps the nonce
and the token's SHA-256, so the welcome step can rebuild the link while a copy
of the database alone cannot sign anybody in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings


def new_nonce() -> str:
    return secrets.token_hex(16)


def make_token(tenant_id: int, nonce: str) -> str:
    message = f"signin:{tenant_id}:{nonce}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def signin_url(tenant, identity) -> str:
    return f"{tenant.url}signin?token={make_token(tenant.pk, identity.token_nonce)}"
