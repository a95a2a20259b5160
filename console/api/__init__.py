"""The automation API under /api/v1/ (console.api.v1), its tokens and its idempotency keys."""
