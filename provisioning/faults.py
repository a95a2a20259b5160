"""Fault injection for tests and demonstrations (PROVISIONING_FAULTS_ENABLED=1 only).

A fault is ``STEP:KIND[:N]``: ``transient`` fails N times then succeeds,
``permanent`` fails, ``hang`` takes N seconds (honouring cancel; a wait like
any other, so the run is parked and holds no worker), ``crash`` ends the
worker process abruptly at the step's start, N times, and ``crash_at`` ends it
once at one point of the step (``crash_point``): ``before_effect`` (after
"running" is recorded), ``after_effect`` (after the step's work, before its
result is recorded) or ``after_record`` (after the result is recorded). The
same three points exist while a step is undone (``crash_at(step, point,
undo=True)``, for tests: the command line names the step's own run).
"""

from __future__ import annotations

import logging
import os

from django.conf import settings

from provisioning.errors import PermanentError, TransientError
from tenants.filters import whole_number

KINDS = ("transient", "permanent", "hang", "crash", "crash_at")
DEFAULT_N = {"transient": 1, "permanent": 1, "hang": 60, "crash": 1}
CRASH_POINTS = ("before_effect", "after_effect", "after_record")
# The worker's exit status when a fault ends it (EX_SOFTWARE).
CRASH_STATUS = 70
log = logging.getLogger("provisioning.faults")


class FaultsDisabled(Exception):
    pass


def parse(spec: str) -> dict:
    """'deploy_workloads:transient:2' -> {"step", "kind", "n", "used"}; ValueError if bad."""
    from provisioning.steps import STEP_IDS

    if not settings.PROVISIONING_FAULTS_ENABLED:
        raise FaultsDisabled(
            "fault injection is disabled here; set PROVISIONING_FAULTS_ENABLED=1 to use --fault"
        )
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"--fault {spec!r}: expected STEP:KIND[:N]")
    step, kind = parts[0], parts[1]
    if step not in STEP_IDS:
        raise ValueError(f"--fault {spec!r}: unknown step {step!r}; steps: {', '.join(STEP_IDS)}")
    if kind not in KINDS:
        raise ValueError(f"--fault {spec!r}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    if kind == "crash_at":
        if len(parts) != 3 or parts[2] not in CRASH_POINTS:
            raise ValueError(f"--fault {spec!r}: crash_at needs a point: {', '.join(CRASH_POINTS)}")
        return crash_at(step, parts[2])
    n = DEFAULT_N[kind]
    if len(parts) == 3:
        # The shared parser: isdigit() says yes to "²", which int() refuses.
        n = whole_number(parts[2], default=0, maximum=10**9)
        if not 1 <= n <= 3600:
            raise ValueError(f"--fault {spec!r}: N must be a whole number from 1 to 3600")
    return {"step": step, "kind": kind, "n": n, "used": 0}


def crash_at(step: str, point: str, *, undo: bool = False) -> dict:
    """The fault that ends the worker once at ``point`` of ``step`` (its undo with ``undo``)."""
    if point not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {point!r}; points: {', '.join(CRASH_POINTS)}")
    fault = {"step": step, "kind": "crash_at", "n": point, "used": 0}
    if undo:
        fault["phase"] = "undo"
    return fault


def describe(fault: dict) -> str:
    """A fault as its spec reads: 'deploy_workloads:crash_at:after_effect' (+ ' (undo)')."""
    text = f"{fault['step']}:{fault['kind']}:{fault['n']}"
    return text + " (undo)" if fault.get("phase") == "undo" else text


def _die(what: str) -> None:
    log.warning("injected crash %s: exiting the worker", what)
    logging.shutdown()
    os._exit(CRASH_STATUS)


def crash_point(ctx, point: str) -> None:
    """The engine passes each crash point of a step (or of its undo); a ``crash_at``
    fault for this step, phase and point ends the worker here, once.

    Which phase is the step's status: ``compensating``/``compensated`` while it
    is undone. The use is recorded before the worker dies, so the resumed run
    goes on; after ``after_record`` of the run's last step the run has ended
    and its lease with it, so the record is not fenced (it is only the
    fault's own bookkeeping).
    """
    if not settings.PROVISIONING_FAULTS_ENABLED:
        return
    faults = ctx.run.faults or []
    undoing = ctx.step_run.status in ("compensating", "compensated")
    for fault in faults:
        if (
            fault["kind"] != "crash_at"
            or fault["step"] != ctx.step_run.step_id
            or fault["n"] != point
            or (fault.get("phase") == "undo") != undoing
            or fault.get("used", 0)
        ):
            continue
        fault["used"] = 1
        ctx.save_faults(faults, unfenced=point == "after_record")
        _die(f"at {describe(fault)}")


def apply(ctx, step_id: str, attempt: int) -> None:
    """Called by the engine at the start of each attempt of a step."""
    if not settings.PROVISIONING_FAULTS_ENABLED:
        return  # a worker where faults are off runs every step for real
    faults = ctx.run.faults or []
    for fault in faults:
        if fault["step"] != step_id:
            continue
        kind, n = fault["kind"], fault["n"]
        if kind == "crash" and fault.get("used", 0) < n:
            fault["used"] = fault.get("used", 0) + 1
            ctx.save_faults(faults)  # committed before dying, so the count survives
            _die(f"at {step_id} ({fault['used']}/{n})")
        if kind == "permanent":
            raise PermanentError(f"injected permanent fault at {step_id}", category="fault")
        if kind == "transient" and attempt <= n:
            raise TransientError(
                f"injected transient fault {attempt}/{n} at {step_id}", category="fault"
            )
        if kind == "hang" and attempt == 1:
            # Called at the start of every check of the step: the first one
            # starts the hang, the later ones see whether it is over.
            if "hang_until" not in ctx.memo:
                ctx.log(f"injected hang: taking {n}s (cancel stops it)")
                ctx.extend_deadline(n)
                ctx.memo["hang_until"] = ctx.elapsed() + n
            left = ctx.memo["hang_until"] - ctx.elapsed()
            if left > 0:
                raise ctx.check_again(
                    left, message=f"injected hang of {n}s", reason=f"injected hang at {step_id}"
                )
