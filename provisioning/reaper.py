"""Resume runs whose worker died.

The queue does not guarantee resumption: the Redis broker loses a task whose
worker dies, and the ORM broker re-delivers only after `retry` seconds. A run
in flight whose lease expired, or that was never claimed, is enqueued again;
the lease makes a duplicate delivery harmless. A run that keeps breaking its
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
from provisioning.queue import enqueue_run

log = logging.getLogger("provisioning.reaper")
# A queued run nobody claimed for this long has lost its task.
UNCLAIMED_GRACE = timedelta(seconds=30)


def reap() -> str:
    now = timezone.now()
    stale = ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE).filter(
        Q(lease_expires_at__lt=now)
        | Q(lease_expires_at__isnull=True, created_at__lt=now - UNCLAIMED_GRACE)
    )
    ids = list(stale.values_list("pk", flat=True))
    for run_id in ids:
        log.warning("run %s: lease expired or never claimed; enqueueing it again", run_id)
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
