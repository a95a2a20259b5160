"""Resume runs whose worker died, and make sure parked runs have a pump.

The queue does not guarantee resumption: the Redis broker loses a task whose
worker dies, and the ORM broker re-delivers only after `retry` seconds. A run
in flight whose lease expired, or that was never claimed, is enqueued again;
the lease makes a duplicate delivery harmless. A parked run (no lease, a
future ``wake_at``) is not lost: it waits for a pump. One that has been due
for a few seconds with nobody claiming it (every pump's worker died, say) is
enqueued too. A run that keeps breaking its
worker does not come back forever: each resume is counted when claimed, and
past PROVISIONING_MAX_RESUMES the engine fails it (see engine.advance), after
which it is not in flight and nothing here picks it up.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from provisioning.models import ProvisioningRun
from provisioning.queue import enqueue_pump, enqueue_run

log = logging.getLogger("provisioning.reaper")
# A queued run nobody claimed for this long has lost its task.
UNCLAIMED_GRACE = timedelta(seconds=30)
# A parked run due this long ago with nobody claiming it has no pump: a
# waiting pump claims a due run within milliseconds.
PARKED_GRACE = timedelta(seconds=3)


def unattended(now=None):
    """Live runs no worker is advancing and none will without a task: see reap()."""
    now = now or timezone.now()
    return ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE).filter(
        Q(lease_expires_at__lt=now)
        | Q(
            lease_expires_at__isnull=True,
            wake_at__isnull=True,
            created_at__lt=now - UNCLAIMED_GRACE,
        )
        | Q(lease_expires_at__isnull=True, wake_at__lt=now - PARKED_GRACE)
    )


def reap() -> str:
    stale = unattended()
    ids = list(stale.values_list("pk", flat=True))
    for run_id in ids:
        log.warning("run %s: lease expired, never claimed, or parked and due; enqueued", run_id)
        enqueue_run(run_id)
    return f"resumed {len(ids)} run(s)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_local_owners() -> int:
    """Expire at once the leases held by dead processes on this host, and resume them."""
    host = socket.gethostname()
    count = 0
    live = ProvisioningRun.objects.filter(
        status__in=ProvisioningRun.LIVE, lease_owner__startswith=f"{host}:"
    ).values_list("pk", "lease_owner")
    for run_id, owner in live:
        try:
            pid = int(owner.split(":")[1])
        except (IndexError, ValueError):
            continue
        if _pid_alive(pid):
            continue
        # Conditional on the same owner: a worker that claimed it meanwhile keeps it.
        if ProvisioningRun.objects.filter(pk=run_id, lease_owner=owner).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        ):
            log.warning("run %s: its worker (pid %s) died; resuming it", run_id, pid)
            enqueue_run(run_id)
            count += 1
    return count


def ensure_pump() -> bool:
    """Enqueue a pump if runs are parked (a cluster starting after every worker died),
    or to be the listening waiter (engine.listening).

    Parked runs hold no lease, so no dead owner points at them: without this
    they would wait for the reaper's next minute. A pump that finds another
    already waiting returns at once, so an extra one costs one short task.
    """
    from provisioning.engine import listening

    parked = ProvisioningRun.objects.filter(
        status__in=ProvisioningRun.LIVE, lease_expires_at__isnull=True, wake_at__isnull=False
    )
    if not listening() and not parked.exists():
        return False
    enqueue_pump()
    return True
