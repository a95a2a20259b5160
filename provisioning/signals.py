"""Hooks into django-q2's worker life cycle."""

from django.dispatch import receiver
from django_q.signals import post_spawn


@receiver(post_spawn)
def resume_runs_of_dead_workers(sender, proc_name, **kwargs):
    # A worker spawned after another died (the cluster reincarnates it): runs
    # whose lease names a dead process on this host can resume now, instead of
    # waiting for the lease to expire and the reaper's next minute.
    # Runs parked when the previous cluster died hold no lease: a pump takes
    # them up now (each spawning worker asks; an extra pump returns at once).
    from provisioning.reaper import ensure_pump, reap_dead_local_owners

    reap_dead_local_owners()
    ensure_pump()


@receiver(post_spawn)
def follow_swarm_tasks(sender, proc_name, **kwargs):
    # Swarm tenants' routes follow their tasks within seconds: every worker
    # runs a follower thread (one of them holds the lock and follows).
    from provisioning.traffic.follow import ensure_follower

    ensure_follower()
