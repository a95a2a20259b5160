"""Requests per API token, counted in a cache every console process shares."""

from __future__ import annotations

from django.conf import settings
from django.core.cache import caches
from ninja.throttling import SimpleRateThrottle


class TokenRateThrottle(SimpleRateThrottle):
    """django-ninja's sliding-window throttle, keyed by the token (not its user or address).

    The rate is read per request (settings.API_RATE_LIMIT), so a test or an
    override changes it without rebuilding the API; the counts live in the
    shared "api" cache, so two daphne processes count one token's requests
    together.
    """

    def __init__(self):
        super().__init__(rate=settings.API_RATE_LIMIT)

    def allow_request(self, request) -> bool:
        self.cache = caches["api"]
        if self.rate != settings.API_RATE_LIMIT:
            self.rate = settings.API_RATE_LIMIT
            self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request)

    def get_cache_key(self, request) -> str | None:
        token = getattr(request, "auth", None)
        # The digest, not the row's id: ids repeat across databases (test
        # databases, installations) that may share one Redis.
        return None if token is None else f"throttle_token_{token.digest[:32]}"
