"""Errors that steps and drivers raise, and how the engine treats them.

The engine retries a TransientError within the step's budget and fails a
PermanentError at once. Anything else is classified by ``classify`` below.
"""

from __future__ import annotations


class StepError(Exception):
    """Base class: an error with a category an operator can act on."""

    category = "unknown"
    transient = True

    def __init__(self, message: str, *, category: str | None = None):
        super().__init__(message)
        if category:
            self.category = category


class TransientError(StepError):
    """Worth another attempt: a timeout, a refused connection, a busy engine."""

    transient = True


class PermanentError(StepError):
    """Another attempt would fail the same way: bad input, a missing image."""

    transient = False


class Cancelled(Exception):
    """Raised inside a step when the operator asked to cancel the run."""


class Fenced(Exception):
    """This worker no longer owns the run: a newer lease, a cancel or a reset."""


# Categories an operator sees on the failure card, with the next action.
CATEGORIES = {
    "docker_unreachable": (
        "Docker Engine unreachable",
        "Check that dockerd is running and DOCKER_HOST points at it, then retry.",
    ),
    "image_missing": (
        "Workload image missing",
        "Build or load the plan's image on the engine, then retry.",
    ),
    "port_in_use": (
        "Port in use",
        "Free the port or let the engine pick another, then retry.",
    ),
    "readiness_timeout": (
        "Readiness timeout",
        "Read the replica logs in the step's panel; fix the workload, then retry.",
    ),
    "traffic": (
        "Tenant URL not serving",
        "The replicas are up but the tenant's URL did not return its page: check the "
        "route's backends and the proxy (or TRAFFIC_VERIFY_URL), then retry.",
    ),
    "database": (
        "Database error",
        "Check that PostgreSQL answers and has room, then retry.",
    ),
    "cancelled": (
        "Cancelled by operator",
        "Retry when ready, or decommission the tenant.",
    ),
    "validation": (
        "Invalid request",
        "Correct the request and create the tenant again.",
    ),
    "fault": (
        "Injected fault",
        "Provision again without the --fault option.",
    ),
    "platform": (
        "Platform error",
        "This is a bug or fault in the platform, not in the tenant's request: report it with "
        "the diagnostics bundle (Copy diagnostics); after a fix, retry.",
    ),
    "unknown": (
        "Unexpected error",
        "Read the step's log; retry, or escalate with the diagnostics.",
    ),
}


def classify(exc: BaseException) -> StepError:
    """Turn any exception into a StepError with a category and transience."""
    if isinstance(exc, StepError):
        return exc
    import docker.errors
    import requests.exceptions
    from django.db import DatabaseError

    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, docker.errors.ImageNotFound):
        return PermanentError(text, category="image_missing")
    if isinstance(exc, docker.errors.APIError):
        if "port is already allocated" in text or "address already in use" in text:
            return TransientError(text, category="port_in_use")
        if exc.is_server_error():
            return TransientError(text, category="docker_unreachable")
        return PermanentError(text, category="unknown")
    if isinstance(exc, requests.exceptions.ConnectionError | docker.errors.DockerException):
        return TransientError(text, category="docker_unreachable")
    if isinstance(exc, DatabaseError):
        return TransientError(text, category="database")
    if isinstance(exc, OSError | TimeoutError):
        return TransientError(text)
    return TransientError(f"{exc.__class__.__name__}: {text}")


def platform_error(exc: BaseException) -> PermanentError:
    """An exception that escaped the engine itself rather than a step: a platform bug.

    Retrying the step would not help (the same code runs again), so it is
    permanent; the run is resumed a bounded number of times (see engine.advance)
    in case the cause was passing, such as a database restart.
    """
    text = str(exc) or "no message"
    return PermanentError(
        f"platform error: {exc.__class__.__name__}: {text}"[:2000], category="platform"
    )
