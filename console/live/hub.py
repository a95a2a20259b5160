"""One LISTEN connection per process, fanning changes out to local websockets.

The database is the source of truth; a notification only says which topics
changed. The hub keeps a registry of connected consumers by topic. When topics
change it renders each affected part (page kind, tenant, role, filters: its
render key) once for the whole process, compares it with what it last sent
for that key, and sends every socket that shows it only the regions and list
items whose HTML changed (``console.fragments.changes``), as htmx
out-of-band swaps. A socket gets the full page on connect, on its "refresh"
frame, after it joined behind a change it may have missed, and after the
listener reconnects.

The first notification of a burst renders at once; those that arrive while
it renders are rendered together right after it (at most one flush per
``COALESCE_SECONDS``).

Before anything is rendered for a socket, the hub's gate asks whether the
socket's session still signs in its user with its role (``access``), and
closes those where it does not. An answer is trusted for
``access.CHECK_SECONDS``; while sockets are being pushed to, a warming loop
asks again for their grants before the answer runs out, so that a push does
not wait for the database to say what it said a second ago.

Every ``LIVE_HEARTBEAT_SECONDS`` each socket gets ``HEARTBEAT``, a comment
that swaps nothing: a page that hears nothing for two intervals knows its
socket was silently cut (a proxy that stopped forwarding) and reconnects.

Two safety nets keep tabs converging on the database even when a
notification is lost: when the listener reconnects it sends every subscriber
its full page (notifications in the gap are gone), and while any run is in
flight a resync every few seconds renders the topics it touches again (and
sends what changed, such as a step that has become "stalled?").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import psycopg
from channels.db import database_sync_to_async
from django.conf import settings

from console.fragments import Changes, Page, changes, full
from console.live.access import CHECK_SECONDS, Gate, Grant
from provisioning.audit import CHANNEL
from provisioning.pgconn import conninfo

log = logging.getLogger("console.live")

# After a flush starts, the next one starts no sooner than this: a storm of
# notifications renders each key at most 1 / COALESCE_SECONDS times a second.
COALESCE_SECONDS = 0.005
RESYNC_SECONDS = 2.0
FRESH_SECONDS = 1.0  # how old a render a connecting tab may be given
# A frame that swaps nothing: the page only notes that its socket still carries frames.
HEARTBEAT = "<!-- live -->"
BACKOFF_START, BACKOFF_MAX = 0.5, 5.0


@dataclass(frozen=True)
class Part:
    """A piece of what a socket shows: equal keys render equal pages, for the same topics."""

    key: tuple
    topics: frozenset[str]
    render: Callable[[], Page]


class Subscriber(Protocol):
    topics: set[str]
    grant: Grant
    needs_full: bool  # set by the hub: the next push is the whole page

    def parts(self) -> list[Part]: ...

    async def deliver(self, html: str) -> None: ...

    async def revoke(self, code: int) -> None:
        """Close for good: the grant no longer holds (``code`` says why)."""


def _db_call(fn, *args):
    """Run an ORM function off the event loop (Channels closes stale connections)."""
    return database_sync_to_async(fn)(*args)


class Hub:
    def __init__(self) -> None:
        self.subscribers: dict[str, set[Subscriber]] = defaultdict(set)
        self.members: set[Subscriber] = set()
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.connected = asyncio.Event()
        self.listener_generation = 0  # bumps on every (re)connect, for tests
        self.notified = 0  # notifications received, whoever they were for
        self.joined_unheard: set[str] = set()  # topics joined while not listening
        self.gate = Gate()
        # What each render key's sockets were last sent, and how many sockets show it.
        self.sent: dict[tuple, Page] = {}
        self.key_refs: dict[tuple, int] = defaultdict(int)
        # The latest render of each key, for sockets connecting right after it.
        self.fresh: dict[tuple, tuple[Page, int, float]] = {}

    # -- registry ---------------------------------------------------------
    def add(self, subscriber: Subscriber) -> None:
        if subscriber not in self.members:
            self.members.add(subscriber)
            for part in subscriber.parts():
                self.key_refs[part.key] += 1
        for topic in subscriber.topics:
            self.subscribers[topic].add(subscriber)
        self._ensure_running()

    def join(
        self, subscriber: Subscriber, since: int, shown: dict[tuple, Page] | None = None
    ) -> None:
        """Add a subscriber that has just been sent ``shown`` (by key), rendered after ``since``.

        A notification that arrived between ``since`` (``self.notified`` read
        before that render) and now was not for this subscriber yet, and its
        change may have missed the render: its next push is the full page, or
        it could stay behind with no later change to bring it up to date.
        Otherwise what it was sent is what its key's sockets are known to
        show, unless the key already has a record.
        """
        self.add(subscriber)
        if not self.connected.is_set():
            # Not listening yet (the first socket starts the listener): what
            # commits before LISTEN is unheard, so send it all once it listens.
            subscriber.needs_full = True
            self.joined_unheard |= subscriber.topics
        elif self.notified != since:
            subscriber.needs_full = True
            self.mark(subscriber.topics)
        else:
            for key, page in (shown or {}).items():
                self.sent.setdefault(key, page)

    def fresh_page(self, key: tuple) -> Page | None:
        """A page of ``key`` rendered less than ``FRESH_SECONDS`` ago with no notification since.

        A tab that connects gets it instead of a render of its own: when many
        tabs connect at once (a daphne restart), the page renders about once
        per ``FRESH_SECONDS``, not once per tab. A notification since the
        render, or a listener that is not listening, means render afresh.
        """
        found = self.fresh.get(key)
        if found is None or not self.connected.is_set():
            return None
        page, notified, at = found
        if notified != self.notified or time.monotonic() - at > FRESH_SECONDS:
            return None
        return page

    def rendered(self, key: tuple, page: Page, since: int) -> None:
        """``page`` of ``key`` was rendered after ``since`` (``self.notified`` before it)."""
        self.fresh[key] = (page, since, time.monotonic())

    def remove(self, subscriber: Subscriber) -> None:
        for topic in subscriber.topics:
            self.subscribers[topic].discard(subscriber)
            if not self.subscribers[topic]:
                del self.subscribers[topic]
        if subscriber in self.members:
            self.members.discard(subscriber)
            for part in subscriber.parts():
                self.key_refs[part.key] -= 1
                if self.key_refs[part.key] <= 0:
                    del self.key_refs[part.key]
                    self.sent.pop(part.key, None)
                    self.fresh.pop(part.key, None)

    async def admit(self, subscribers, *, ahead: float = 0.0) -> list[Subscriber]:
        """Those of ``subscribers`` that may still be sent to; the rest are revoked and dropped."""
        admitted = await self.gate.admit(subscribers, ahead=ahead)
        for subscriber in set(subscribers).difference(admitted):
            self.remove(subscriber)
        return admitted

    def mark(self, topics) -> None:
        wanted = {t for t in topics if t in self.subscribers}
        if wanted:  # else nobody here shows these topics: nothing to render
            self.dirty |= wanted
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
            asyncio.ensure_future(self._heartbeat_loop()),
            asyncio.ensure_future(self._warm_loop()),
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
                        # Notifications sent while we were away are lost: every
                        # socket gets its full page (nothing is known to be shown).
                        self.sent.clear()
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
        """``{"topics": [...], "seq": n}``: only the topics matter here (the pages read
        the rows, toasts included); other keys are ignored, a bad payload is logged."""
        self.notified += 1
        try:
            topics = [str(t) for t in json.loads(payload).get("topics", [])]
        except (ValueError, AttributeError, TypeError):
            log.warning("ignoring a malformed notification: %.200r", payload)
            return
        self.mark(topics)

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            topics, self.dirty = self.dirty, set()
            started = loop.time()
            try:
                await self.flush(topics)
            except Exception:
                log.exception("live flush failed for %s", sorted(topics))
            # The rest of a burst gathers behind this flush: rendered together next.
            rest = COALESCE_SECONDS - (loop.time() - started)
            if rest > 0:
                await asyncio.sleep(rest)

    async def flush(self, topics: set[str]) -> None:
        candidates: set[Subscriber] = set()
        for topic in topics:
            candidates |= self.subscribers.get(topic, set())
        started = time.perf_counter()
        targets = await self.admit(candidates)
        if not targets:
            return
        admitted = time.perf_counter()
        render_s, frames = 0.0, 0
        # Each distinct part renders once for the whole process, however many
        # sockets show it, and is compared once with what its sockets were sent.
        rendered: dict[tuple, tuple[Page, Changes]] = {}
        for subscriber in targets:
            flow, tables = [], []
            for part in subscriber.parts():
                if not subscriber.needs_full and not part.topics & topics:
                    continue
                if part.key not in rendered:
                    since = self.notified
                    render_started = time.perf_counter()
                    page = await _db_call(part.render)
                    render_s += time.perf_counter() - render_started
                    rendered[part.key] = (page, changes(self.sent.get(part.key), page))
                    if part.key in self.key_refs:
                        self.sent[part.key] = page
                        self.rendered(part.key, page, since)
                page, delta = rendered[part.key]
                if subscriber.needs_full:
                    flow.append(full(page))
                else:
                    flow.append(delta.flow)
                    tables.extend(delta.table_frames)
            subscriber.needs_full = False
            for frame in ("".join(flow), *tables):
                if frame:
                    await subscriber.deliver(frame)
                    frames += 1
        log.debug(
            "flush %s: gate %.1f ms, %d render(s) %.1f ms, %d frame(s) to %d socket(s) %.1f ms",
            sorted(topics), (admitted - started) * 1000, len(rendered), render_s * 1000,
            frames, len(targets), (time.perf_counter() - admitted - render_s) * 1000,
        )  # fmt: skip

    async def _heartbeat_loop(self) -> None:
        """A proxy can stop forwarding a socket without closing it; the page notices the silence."""
        while True:
            await asyncio.sleep(settings.LIVE_HEARTBEAT_SECONDS)
            for subscriber in list(self.members):
                try:
                    await subscriber.deliver(HEARTBEAT)
                except Exception:  # a socket closing meanwhile; its disconnect removes it
                    log.debug("heartbeat to a closing socket failed", exc_info=True)

    async def _warm_loop(self) -> None:
        """Check again, before their answers run out, the grants of sockets pushed to lately.

        Only grants pushed to within ``access.WARM_SECONDS`` are warmed: an
        idle socket is checked when something is next pushed to it.
        """
        while True:
            await asyncio.sleep(CHECK_SECONDS / 2)
            lately = self.gate.pushed_lately()
            sockets = [s for s in self.members if s.grant in lately]
            if not sockets:
                continue
            try:
                await self.admit(sockets, ahead=CHECK_SECONDS / 2)
            except Exception:
                log.exception("live grant check failed")

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
