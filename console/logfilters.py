"""Logging filters named in settings.LOGGING."""

from __future__ import annotations

import logging


class QueueChatter(logging.Filter):
    """Drop django-q2's per-task INFO lines ("Enqueued [...] id", "Pushed ...").

    They come from whichever process enqueues (a command, the web server), so
    `provision_tenant` printed `[Q] INFO Enqueued ...` on its output. The
    cluster's own lines (startup, "running.", errors) go through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        return not str(record.msg).startswith(("Enqueued", "Pushed"))
