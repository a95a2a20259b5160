"""One LISTEN connection per process, fanning changes out to local websockets.

The database is the source of truth; a notification only says which topics
changed. The hub keeps a registry of connected consumers by topic. When topics
change it renders each affected view once per distinct render key (page kind,
tenant, role, filters) and sends the same HTML to every consumer that shares
the key, as htmx out-of-band swaps.

Before anything is rendered for a socket, the hub's gate asks whether the
socket's session still signs in its user with its role (``access``), and
closes those where it does not.

Two safety nets keep tabs converging on the database even when a
notification is lost: when the listener reconnects it refreshes every
subscriber (notifications in the gap are gone), and while any run is in
flight a resync every few seconds refreshes the topics it touches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

import psycopg
from channels.db import database_sync_to_async

from console.live.access import Gate, Grant
from provisioning.audit import CHANNEL
from provisioning.pgconn import conninfo

log = logging.getLogger("console.live")

FLUSH_DELAY = 0.03  # seconds to gather a burst of notifications into one render
RESYNC_SECONDS = 2.0
BACKOFF_START, BACKOFF_MAX = 0.5, 5.0


class Subscriber(Protocol):
    topics: set[str]
    grant: Grant

    def parts(self) -> list[tuple[tuple, Callable[[], str]]]:
        """(render key, sync render function) pairs; equal keys render equal HTML."""

    async def deliver(self, html: str) -> None: ...

    async def revoke(self, code: int) -> None:
        """Close for good: the grant no longer holds (``code`` says why)."""


def _db_call(fn, *args):
    """Run an ORM function off the event loop (Channels closes stale connections)."""
    return database_sync_to_async(fn)(*args)


class Hub:
    def __init__(self) -> None:
        self.subscribers: dict[str, set[Subscriber]] = defaultdict(set)
        self.dirty: set[str] = set()
        self.seqs: set[int] = set()
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.connected = asyncio.Event()
        self.listener_generation = 0  # bumps on every (re)connect, for tests
        self.notified = 0  # notifications received, whoever they were for
        self.joined_unheard: set[str] = set()  # topics joined while not listening
        self.gate = Gate()

    # -- registry ---------------------------------------------------------
    def add(self, subscriber: Subscriber) -> None:
        for topic in subscriber.topics:
            self.subscribers[topic].add(subscriber)
        self._ensure_running()

    def join(self, subscriber: Subscriber, since: int) -> None:
        """Add a subscriber that has just been sent its state, rendered after ``since``.

        A notification that arrived between ``since`` (``self.notified`` read
        before that render) and now was not for this subscriber yet, and its
        change may have missed the render: render it again, or the page could
        stay behind with no later change to bring it up to date.
        """
        self.add(subscriber)
        if not self.connected.is_set():
            # Not listening yet (the first socket starts the listener): what
            # commits before LISTEN is unheard, so render again once it listens.
            self.joined_unheard |= subscriber.topics
        elif self.notified != since:
            self.mark(subscriber.topics)

    def remove(self, subscriber: Subscriber) -> None:
        for topic in subscriber.topics:
            self.subscribers[topic].discard(subscriber)
            if not self.subscribers[topic]:
                del self.subscribers[topic]

    async def admit(self, subscribers) -> list[Subscriber]:
        """Those of ``subscribers`` that may still be sent to; the rest are revoked and dropped."""
        admitted = await self.gate.admit(subscribers)
        for subscriber in set(subscribers).difference(admitted):
            self.remove(subscriber)
        return admitted

    def mark(self, topics, seq: int | None = None) -> None:
        wanted = {t for t in topics if t in self.subscribers}
        if not wanted:
            # Nobody here shows these topics: nothing to render, no toast to keep
            # (a kept seq would only pile up, or toast late to a newcomer).
            return
        self.dirty |= wanted
        if seq is not None:
            self.seqs.add(seq)
        self.wake.set()

    # -- tasks ------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self.tasks and all(not t.done() for t in self.tasks):
            return
        for task in self.tasks:
            task.cancel()
        self.tasks = [
            asyncio.ensure_future(self._listen()),
            asyncio.ensure_future(self._flush_loop()),
            asyncio.ensure_future(self._resync_loop()),
        ]

    async def stop(self) -> None:
        """Cancel the hub's tasks; the listener's connection closes with its task."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    async def _listen(self) -> None:
        delay = BACKOFF_START
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(**conninfo()) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listener_generation += 1
                    self.connected.set()
                    if self.listener_generation > 1:
                        # Notifications sent while we were away are lost: refresh all.
                        self.mark(list(self.subscribers))
                    elif self.joined_unheard:
                        self.mark(self.joined_unheard)
                    self.joined_unheard = set()
                    delay = BACKOFF_START
                    async for notify in conn.notifies():
                        self._on_notify(notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected.clear()
                log.warning("live listener lost its connection (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX, delay * 2)

    def _on_notify(self, payload: str) -> None:
        self.notified += 1
        try:
            data = json.loads(payload)
            topics = [str(t) for t in data.get("topics", [])]
            seq = data.get("seq")
        except (ValueError, AttributeError):
            log.warning("ignoring a malformed notification: %.200r", payload)
            return
        self.mark(topics, seq if isinstance(seq, int) else None)

    async def _flush_loop(self) -> None:
        while True:
            await self.wake.wait()
            await asyncio.sleep(FLUSH_DELAY)  # gather the rest of the burst
            self.wake.clear()
            topics, self.dirty = self.dirty, set()
            seqs, self.seqs = self.seqs, set()
            try:
                await self.flush(topics, seqs)
            except Exception:
                log.exception("live flush failed for %s", sorted(topics))

    async def flush(self, topics: set[str], seqs: set[int] = frozenset()) -> None:
        candidates: set[Subscriber] = set()
        for topic in topics:
            candidates |= self.subscribers.get(topic, set())
        targets = await self.admit(candidates)
        if not targets:
            return
        toasts = await _db_call(_toasts_for, sorted(seqs)) if seqs else {}
        # Each distinct part (page kind, tenant, role, filters) renders once
        # for the whole process, however many sockets show it.
        rendered: dict[tuple, str] = {}
        for subscriber in targets:
            html = []
            for key, render in subscriber.parts():
                if key not in rendered:
                    rendered[key] = await _db_call(render)
                html.append(rendered[key])
            html.extend(toasts.get(topic, "") for topic in subscriber.topics)
            await subscriber.deliver("".join(html))

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            if not self.subscribers:
                continue
            try:
                live_tenants = await _db_call(_tenants_with_live_runs)
            except Exception:
                log.exception("live resync query failed")
                continue
            if live_tenants:
                self.mark([f"tenant-{pk}" for pk in live_tenants] + ["tenants", "audit"])


def _tenants_with_live_runs() -> list[int]:
    from provisioning.models import ProvisioningRun

    return list(
        ProvisioningRun.objects.filter(status__in=ProvisioningRun.LIVE).values_list(
            "tenant_id", flat=True
        )
    )


def _toasts_for(seqs: list[int]) -> dict[str, str]:
    """Toast HTML per tenant topic for the events among ``seqs`` that deserve one."""
    from console.fragments import toast_fragments
    from provisioning.models import AuditEvent

    events = list(AuditEvent.objects.filter(seq__in=seqs).select_related("tenant"))
    by_topic: dict[str, list] = defaultdict(list)
    for event in events:
        if event.tenant_id:
            by_topic[f"tenant-{event.tenant_id}"].append(event)
    return {topic: html for topic, evs in by_topic.items() if (html := toast_fragments(evs))}


# One hub per event loop, keyed by the loop itself (not its id, which a later
# loop may reuse); daphne runs one loop per process.
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


async def stop_hub() -> None:
    """Stop the running loop's hub, if any (tests; daphne just exits)."""
    hub = _hubs.pop(asyncio.get_running_loop(), None)
    if hub is not None:
        await hub.stop()


def get_hub() -> Hub:
    """The hub of the running event loop (one per daphne process in production)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
    return hub
