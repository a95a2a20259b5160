"""django-q2's ``qcluster``, plus a word to this cluster's waiting pump when it stops.

A pump that waits for work (engine.Waiter) sits inside a worker's task, and
django-q2 stops a cluster gracefully by waiting for every worker's task to
end. Without a word, a stop would wait for the waiter's pump_seconds. On
SIGTERM or SIGINT this cluster announces that it is stopping (engine.
announce_stop), naming itself by the token its workers inherited, and then
stops as django-q2 always does.
"""

from __future__ import annotations

import os
import re

from django.conf import settings
from django.core.management.base import CommandError
from django_q.cluster import Cluster
from django_q.management.commands import qcluster

from provisioning import engine

NAME = re.compile(r"[A-Za-z0-9_-]{1,100}", re.ASCII)


class ConsoleCluster(Cluster):
    def sig_handler(self, signum, frame):
        try:
            engine.announce_stop()
        except Exception:  # noqa: BLE001 - a stop must go on whatever the database says
            engine.log.exception("could not tell the waiting pump that the cluster stops")
        super().sig_handler(signum, frame)


class Command(qcluster.Command):
    """django-q2's command (its options and help), starting a ConsoleCluster."""

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 - as django-q2's: no cluster without a signing key
        name = options.get("cluster_name")
        if name is not None:
            # It names the queue (a Redis key, a column's value): plain words only.
            if not NAME.fullmatch(name):
                raise CommandError(
                    "--name must be 1 to 100 letters, digits, '-' or '_' "
                    f"(got {name[:40].encode('unicode_escape', 'replace').decode()!r})"
                )
            os.environ["Q_CLUSTER_NAME"] = name
        engine.mark_cluster()  # before the workers fork: they inherit the token
        cluster = ConsoleCluster()
        cluster.start()
        if options.get("run_once"):
            cluster.stop()
