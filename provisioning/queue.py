"""Putting work on the django-q2 queue."""

from __future__ import annotations

from django.db import transaction
from django_q.tasks import async_task


def enqueue_run(run_id: int) -> None:
    """Enqueue after the surrounding transaction commits (the worker must see the run)."""
    transaction.on_commit(
        lambda: async_task(
            "provisioning.tasks.advance_run",
            run_id,
            task_name=f"advance-run-{run_id}",
            group="provisioning",
        )
    )


def enqueue_pump() -> None:
    """A task that advances whatever is due and waits for parked runs (engine.pump)."""
    transaction.on_commit(
        lambda: async_task("provisioning.tasks.pump_runs", task_name="pump", group="provisioning")
    )
