"""Errors that steps and drivers raise, and how the engine treats them.

The engine retries a TransientError within the step's budget and fails a
PermanentError at once. An ``EngineOutage`` (a TransientError whose
``outage`` is True) says the container engine itself is unreachable or
restarting: the engine retries it for ``WORKLOAD_ENGINE_OUTAGE_SECONDS``
rather than the step's attempts, since an engine restart takes longer than a
step's backoff. Anything else is classified by ``classify`` below.
"""

from __future__ import annotations


class StepError(Exception):
    """Base class: an error with a category an operator can act on."""

    category = "unknown"
    transient = True
    # True only for EngineOutage: the step is fine, the engine is away.
    outage = False

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


class EngineOutage(TransientError):
    """The Docker Engine is unreachable or restarting: a refused connection, a
    missing socket, a 5xx "daemon is shutting down", a timeout.

    Retried for a time budget (WORKLOAD_ENGINE_OUTAGE_SECONDS), not a count.
    """

    category = "docker_unreachable"
    outage = True


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
    if is_engine_outage(exc):
        return EngineOutage(text)
    if isinstance(exc, docker.errors.ImageNotFound):
        return PermanentError(text, category="image_missing")
    if isinstance(exc, docker.errors.APIError):
        if "port is already allocated" in text or "address already in use" in text:
            return TransientError(text, category="port_in_use")
        if exc.is_server_error():
            return TransientError(text, category="docker_unreachable")
        return PermanentError(text, category="unknown")
    if isinstance(exc, requests.exceptions.RequestException | docker.errors.DockerException):
        return TransientError(text, category="docker_unreachable")
    if isinstance(exc, DatabaseError):
        return TransientError(text, category="database")
    if isinstance(exc, OSError | TimeoutError):
        return TransientError(text)
    return TransientError(f"{exc.__class__.__name__}: {text}")


# What a 5xx from the engine says while it stops or starts. Other 5xx answers
# (a failed port binding, a storage error) are ordinary transient errors: the
# engine is there, and a few attempts are the right budget for them.
OUTAGE_STATUSES = (502, 503, 504)  # a socket proxy in front of a restarting engine
OUTAGE_PHRASES = ("shutting down", "is restarting", "daemon is not running")


def is_engine_outage(exc: BaseException) -> bool:
    """Whether ``exc``, an error of the docker SDK, means the engine did not answer at all.

    The SDK raises a requests ConnectionError for a refused TCP connection,
    a missing or refused unix socket, and a connection the engine dropped
    while stopping; requests' Timeout for an engine that took too long; and
    a DockerException ("Error while fetching server API version") chained to
    one of those when a client is made while the engine is down, so the
    chain of causes is followed. Only the SDK's own errors count: a refused
    connection to an SMTP server is not an engine outage.
    """
    import docker.errors
    import requests.exceptions

    if not isinstance(exc, docker.errors.DockerException | requests.exceptions.RequestException):
        return False
    for _ in range(10):  # a chain is short; the bound only guards against cycles
        if exc is None or isinstance(exc, requests.exceptions.SSLError):
            return False  # TLS trouble is configuration, not a restart
        if isinstance(
            exc,
            requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | ConnectionError  # refused, reset, aborted, broken pipe
            | FileNotFoundError  # the unix socket is gone while dockerd is down
            | TimeoutError,
        ):
            return True
        if isinstance(exc, docker.errors.APIError):
            if not exc.is_server_error():
                return False
            explanation = str(exc.explanation or exc).lower()
            return exc.status_code in OUTAGE_STATUSES or any(
                phrase in explanation for phrase in OUTAGE_PHRASES
            )
        exc = exc.__cause__ or exc.__context__
    return False


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
