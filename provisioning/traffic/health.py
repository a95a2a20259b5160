"""In-process health of replica addresses, and round-robin order over them.

A backend that refused a connection sits out for COOL_DOWN seconds; after
that the next request may try it again (and a success clears it), so a
replica that comes back rejoins the rotation without a separate prober.
Per process, not shared: each console process learns on its own, which costs
at most one failed connect per process per cool-down.
"""

from __future__ import annotations

import itertools
import time

COOL_DOWN = 3.0

_down_until: dict[str, float] = {}
_counters: dict[str, itertools.count] = {}


def mark_down(backend: str) -> None:
    _down_until[backend] = time.monotonic() + COOL_DOWN


def mark_up(backend: str) -> None:
    _down_until.pop(backend, None)


def is_down(backend: str) -> bool:
    until = _down_until.get(backend)
    return until is not None and time.monotonic() < until


def order(key: str, backends: tuple[str, ...] | list[str]) -> list[str]:
    """The backends to try, in order: the round-robin start first, cooling-down ones left out.

    When every backend is cooling down, all are tried anyway: a refused
    connection costs well under a millisecond on a local port, and one may
    have come back, which beats a certain 502.
    """
    if not backends:
        return []
    counter = _counters.setdefault(key, itertools.count())
    start = next(counter) % len(backends)
    rotated = list(backends[start:]) + list(backends[:start])
    return [b for b in rotated if not is_down(b)] or rotated


def reset() -> None:
    """Forget everything (tests)."""
    _down_until.clear()
    _counters.clear()
