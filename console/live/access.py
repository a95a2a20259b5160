"""Whether a websocket may still show what it shows: checked on connect and before deliveries.

A socket is opened by a signed-in user and keeps showing that user's view
(rendered for their role) for as long as the tab lives. When the user signs
out, is deactivated, changes their password or loses the operators group,
the socket must stop: so every connect, every hub push and every "refresh"
frame asks again whether the socket's session still signs in the same user
with the same role, as a page load would.

The answer for a session is trusted for ``CHECK_SECONDS``: the hub renders
once for many sockets, and a push to 100 sockets of one session costs one
check, not 100 (figures in docs/ARCHITECTURE.md, "Live updates").
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import import_module
from types import SimpleNamespace
from typing import Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user
from django.utils import timezone

from tenants.access import role_of

# Close codes the page understands (static/console.js).
SIGNED_OUT = 4401  # the session no longer signs this user in: go to the sign-in page
ROLE_CHANGED = 4403  # still signed in, with another role: reload for the new role

CHECK_SECONDS = 1.0
# The hub keeps checking, ahead of time, the grants pushed to this recently
# (a live run is pushed to at least every few seconds by the hub's resync).
WARM_SECONDS = 5.0


@dataclass(frozen=True)
class Grant:
    """What a socket was opened with: its session, its user and the role it renders for."""

    session_key: str
    user_id: int
    role: str


class _SessionSnapshot(dict):
    """A session's data for Django's ``get_user``, which it may not write back.

    ``get_user`` cycles the key of a session signed with a fallback secret and
    flushes one that fails; a socket cannot hand the browser the new cookie, so
    the cycle would sign the user out. The check only reads; the next page load
    does the writing.
    """

    def cycle_key(self) -> None:
        pass

    def flush(self) -> None:
        self.clear()


def _live_sessions(keys: set[str]) -> dict[str, dict]:
    """The data of each of ``keys`` that is a live (not expired) session."""
    # PostgreSQL refuses NUL in text, and no session key contains one.
    keys = {key for key in keys if key and "\x00" not in key}
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if hasattr(store, "get_model_class"):  # db and cached_db: one query for them all
        rows = store.get_model_class().objects.filter(
            session_key__in=keys, expire_date__gt=timezone.now()
        )
        return {row.session_key: row.get_decoded() for row in rows}
    return {key: data for key in keys if (data := store(key).load())}


def signed_in_users(session_keys: Iterable[str | None]) -> dict[str, object]:
    """The active user each session key signs in, by Django's own rule (signed out: absent)."""
    users = {}
    answers: dict[tuple, object] = {}
    for key, data in _live_sessions(set(session_keys)).items():
        # get_user reads only these three values, so every session of one
        # sign-in (a user's tabs and browsers) shares one answer and one query.
        asked = tuple(
            str(data.get(name)) for name in (SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY)
        )
        if asked not in answers:
            user = get_user(SimpleNamespace(session=_SessionSnapshot(data)))
            # The auth backend already refuses inactive users; a custom one may not.
            answers[asked] = user if user.is_authenticated and user.is_active else None
        if answers[asked] is not None:
            users[key] = answers[asked]
    return users


def grant_for(session_key: str | None) -> tuple[object, Grant] | None:
    """The user and grant for a socket opening with ``session_key``; None when signed out."""
    user = signed_in_users([session_key]).get(session_key)
    if user is None:
        return None
    return user, Grant(session_key, user.pk, role_of(user))


def verdicts(grants: Iterable[Grant]) -> dict[Grant, int | None]:
    """For each grant, None while it still holds, else the close code that says why not."""
    grants = list(grants)
    users = signed_in_users([grant.session_key for grant in grants])
    roles: dict[int, str] = {}  # one group query per user, however many sessions they have
    found: dict[Grant, int | None] = {}
    for grant in grants:
        user = users.get(grant.session_key)
        if user is None or user.pk != grant.user_id:
            found[grant] = SIGNED_OUT
            continue
        if user.pk not in roles:
            roles[user.pk] = role_of(user)
        found[grant] = None if roles[user.pk] == grant.role else ROLE_CHANGED
    return found


class Guarded(Protocol):
    grant: Grant

    async def revoke(self, code: int) -> None:
        """Close the socket with ``code``; it shows nothing more."""


class Gate:
    """Checks sockets' grants before a delivery: each distinct grant once per ``CHECK_SECONDS``."""

    def __init__(self) -> None:
        self.passed: dict[Grant, float] = {}  # grant -> when it last held (monotonic)
        self.pushed: dict[Grant, float] = {}  # grant -> when it was last admitted for a push

    def note(self, grant: Grant) -> None:
        """``grant`` was just checked (a connect): no need to check again at once."""
        self.passed[grant] = time.monotonic()

    def pushed_lately(self) -> set[Grant]:
        """The grants admitted for a push within ``WARM_SECONDS``."""
        now = time.monotonic()
        self.pushed = {g: t for g, t in self.pushed.items() if now - t < WARM_SECONDS}
        return set(self.pushed)

    async def admit(self, sockets: Iterable[Guarded], *, ahead: float = 0.0) -> list[Guarded]:
        """The sockets whose grant still holds; the others are revoked with the reason.

        ``ahead``: also check again the grants that stop being trusted within
        that many seconds (the hub's warming loop, so that a push seldom waits
        for a check).
        """
        sockets = list(sockets)
        now = time.monotonic()
        self.passed = {g: t for g, t in self.passed.items() if now - t < CHECK_SECONDS}
        fresh = {g for g, t in self.passed.items() if now - t < CHECK_SECONDS - ahead}
        stale = {s.grant for s in sockets} - fresh
        # Trusted from when the check began: a sign-out committed while the
        # check ran must not be trusted away for a further CHECK_SECONDS. (The
        # hub's warming check keeps slow checks off the pushes' path.)
        asked = time.monotonic()
        found = await database_sync_to_async(verdicts)(stale) if stale else {}
        now = time.monotonic()
        self.passed.update((g, asked) for g, code in found.items() if code is None)
        admitted = []
        for socket in sockets:
            code = found.get(socket.grant)
            if code is None:
                admitted.append(socket)
                if not ahead:  # a push, not the warming loop
                    self.pushed[socket.grant] = now
            else:
                await socket.revoke(code)
        return admitted
