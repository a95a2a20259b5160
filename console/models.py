"""What the automation API keeps: its tokens, and the answers it gave under an Idempotency-Key."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    """A bearer token for /api/v1/: it acts as ``user``, with that user's role.

    Only a SHA-256 digest of the token is stored. The token is 256 random bits,
    so a plain (unsalted, fast) digest is safe: there is no dictionary to try
    against it, and looking it up by digest is one indexed query per request.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=80, help_text="What uses it, e.g. billing-signup.")
    # The token's first characters, to tell tokens apart in the admin and in logs.
    prefix = models.CharField(max_length=16, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…, {self.user})"


class IdempotentRequest(models.Model):
    """The answer a token's request got under an Idempotency-Key.

    The row is claimed (inserted, ``status`` empty) before the request is
    answered, so two requests with one key cannot both act: the second finds
    the row. ``fingerprint`` is a digest of the method, path and body; the same
    key with another fingerprint is refused.
    """

    token = models.ForeignKey(ApiToken, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    status = models.PositiveSmallIntegerField(null=True, blank=True)  # None: being answered
    body = models.JSONField(null=True, blank=True)
    location = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["token", "key"], name="idempotency_key_unique_per_token"
            )
        ]

    def __str__(self) -> str:
        return f"{self.key} -> {self.status}"
