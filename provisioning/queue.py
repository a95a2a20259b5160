"""Putting work on the django-q2 queue."""

from __future__ import annotations

from django.db import transaction
from django_q.tasks import async_task


def enqueue_run(run_id: int, *, unless_listened: bool = False) -> None:
    """Enqueue after the surrounding transaction commits (the worker must see the run).

    ``unless_listened`` (a new run): no task when a pump is waiting for new
    runs (engine.waiter_listening), since the commit's notification already
    woke it; a task would only cost the queue's round trip and find the run
    taken.
    """

    def send():
        from provisioning.engine import waiter_listening

        if unless_listened and waiter_listening():
            return
        async_task(
            "provisioning.tasks.advance_run",
            run_id,
            task_name=f"advance-run-{run_id}",
            group="provisioning",
        )

    transaction.on_commit(send)


def enqueue_pump() -> None:
    """A task that advances whatever is due and waits for parked runs (engine.pump)."""
    transaction.on_commit(
        lambda: async_task("provisioning.tasks.pump_runs", task_name="pump", group="provisioning")
    )
