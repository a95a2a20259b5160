"""Plain-text rendering of the status JSON, and waiting for a run to settle."""

from __future__ import annotations

import json
import time

from provisioning.models import ProvisioningRun, latest_run
from provisioning.status import tenant_status
from tenants.models import Tenant

MARKS = {
    "pending": " ",
    "running": ">",
    "retrying": "~",
    "succeeded": "x",
    "failed": "!",
    "compensating": "<",
    "compensated": "-",
    "skipped": "=",
}


def as_json(status: dict) -> str:
    return json.dumps(status, indent=2)


def as_text(status: dict) -> str:
    lines = [
        f"{status['slug']}-{status['org']}  plan {status['plan']}  state {status['state']}"
        f"  attempt {status['attempt']}",
        f"url {status['url']}",
    ]
    if status["error"]:
        cancelled = " (cancelled)" if status["cancelled"] else ""
        lines.append(f"error at {status['failed_step'] or '-'}{cancelled}: {status['error']}")
    if wait := waiting_text(status):
        lines.append(wait)
    total = len(status["steps"])
    for step in status["steps"]:
        duration = f"{step['duration_s']:.2f}s" if step["duration_s"] is not None else ""
        extra = step["progress"].get("message", "") if step["status"] == "running" else ""
        if step["error"] and step["status"] in ("failed", "retrying", "compensating"):
            extra = step["error"]
        lines.append(
            f"[{MARKS.get(step['status'], '?')}] {step['position']}/{total} {step['label']:<28}"
            f" {step['status']:<12} {step['attempts']}x {duration:>8}  {extra}".rstrip()
        )
    return "\n".join(lines)


def _clock(value: str) -> str:
    """'2026-12-01T17:34:05.123456Z' -> '17:34:05 UTC'."""
    return value[11:19] + " UTC" if value and len(value) >= 19 else value


def waiting_text(status: dict) -> str | None:
    """'waiting: <reason>; next check at 12:00:05 UTC', or 'waiting for a worker'."""
    wait = status.get("waiting")
    if not wait:
        return None
    if wait["for"] == "worker":
        return "waiting for a worker"
    return f"waiting: {wait['reason']}; next check at {_clock(wait['next_check_at'])}"


def progress_line(status: dict) -> str | None:
    current = status["current_step"]
    if not current:
        return None
    step = next(s for s in status["steps"] if s["id"] == current)
    total = len(status["steps"])
    wait = status.get("waiting")
    if step["status"] == "pending" and (wait is None or wait["for"] == "worker"):
        if wait is None:  # a worker holds the run and is about to start the step
            return f"step {step['position']}/{total} {step['label']}: starting"
        return f"waiting for a worker (next: step {step['position']}/{total})"
    message = step["progress"].get("message", "")
    line = f"step {step['position']}/{total} {step['label']}: {step['status']}" + (
        f" ({message})" if message else ""
    )
    if wait:
        line += f"; {waiting_text(status)}"
    return line


def _without_times(line: str) -> str:
    # Each check moves the next check's time; only a change of anything else
    # is worth a new line.
    return line.split("; next check at ")[0]


def wait_until_settled(tenant: Tenant, *, timeout: float, echo=None, poll: float = 0.1) -> dict:
    """Poll until the tenant's latest run is no longer in flight.

    ``echo`` gets a line whenever the current step changes. Raises
    TimeoutError with advice if nothing settles in ``timeout`` seconds.
    """
    started = time.monotonic()
    last_line = None
    warned = False
    while True:
        # The run first, then the status: a run that settled before this read
        # is fully reflected in the status read after it.
        run = latest_run(tenant)
        settled = run is None or not run.is_live
        tenant.refresh_from_db()
        status = tenant_status(tenant)
        line = progress_line(status)
        if echo and line and _without_times(line) != last_line:
            echo(line)
            last_line = _without_times(line)
        if settled:
            return status
        waited = time.monotonic() - started
        if (
            echo
            and not warned
            and waited > 10
            and run.status == ProvisioningRun.Status.QUEUED
            and run.lease_owner == ""
        ):
            echo("no worker has picked the run up yet: is `manage.py qcluster` running?")
            warned = True
        if waited > timeout:
            raise TimeoutError(
                f"{tenant.slug} is still {tenant.state} after {timeout:.0f}s; "
                f"`manage.py tenant_status {tenant.slug}` shows where it is"
            )
        time.sleep(poll)
