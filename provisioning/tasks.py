"""django-q2 entry points. Each is a thin call into the engine or the reaper."""

from provisioning import engine, reaper


def advance_run(run_id: int) -> str:
    return engine.pump(run_id)


def pump_runs() -> str:
    return engine.pump()


def reap_expired_leases() -> str:
    return reaper.reap()


def reconcile_report() -> str:
    from provisioning import reconcile

    report, _ = reconcile.check()
    return f"{len(report.findings)} problem(s), {len(report.new)} new"
