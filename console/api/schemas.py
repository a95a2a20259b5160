"""The shapes of the automation API, as its OpenAPI schema describes them.

Requests are parsed by these; answers are the status JSON of
provisioning.status (written once, there) and are described here for the
schema only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from ninja import Field, Schema

from tenants.models import STATES


class TenantIn(Schema):
    # Strings, all optional here: every rule (empty included) is
    # tenants.validation.validate_request's, with the console's words.
    slug: str = ""
    org: str = ""
    plan: str = ""
    admin_email: str = ""


class ActionIn(Schema):
    reason: str = Field("", description="Kept in the audit log.")
    force: bool = Field(False, description="retry only: go past the failed-attempts limit.")


class StepOut(Schema):
    id: str
    label: str
    position: int
    status: Literal[
        "pending", "running", "retrying", "succeeded", "failed", "compensating",
        "compensated", "skipped",
    ]  # fmt: skip
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    error: str | None
    progress: dict


class StatusOut(Schema):
    """The status JSON (`tenant_status --json`, `/api/tenants/<slug>`)."""

    slug: str
    org: str
    plan: str
    state: Literal[tuple(STATES)]  # type: ignore[valid-type]
    url: str
    attempt: int
    current_step: str | None
    failed_step: str | None
    error: str | None
    cancelled: bool
    created_at: datetime
    activated_at: datetime | None
    waiting: dict | None
    steps: list[StepOut]
    workloads: dict


class TenantSummary(Schema):
    slug: str
    org: str
    plan: str = Field(..., alias="plan.name")
    state: str
    url: str
    created_at: datetime
    activated_at: datetime | None


class ErrorOut(Schema):
    error: str


class FieldErrorsOut(Schema):
    errors: dict[str, list[str]]
