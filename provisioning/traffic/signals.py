"""Rewrite the routes file after any committed change to a Route saved or deleted
through the ORM (queryset .update() sends no signal: those callers call
export.schedule_write themselves)."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from provisioning.models import Route
from provisioning.traffic import export


@receiver(post_save, sender=Route, dispatch_uid="traffic-routes-saved")
@receiver(post_delete, sender=Route, dispatch_uid="traffic-routes-deleted")
def route_changed(sender, **kwargs) -> None:
    export.schedule_write()
