"""Websocket consumers: parse, subscribe to the hub, render. No domain logic here.

Every consumer sends the full current state on connect (so a reconnecting
tab catches up), then whatever the hub pushes. Frames from the browser are
optional: ``{"action": "refresh"}`` re-sends the state; anything else gets an
error frame and changes nothing.

Who may watch is decided by ``console.live.access`` from the session
cookie, on connect and again before every push and refresh; which pages may
open a socket at all, by ``console.ws_security`` in front of these.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.utils.html import escape

from console import fragments
from console.fragments import Page, full
from console.live import access
from console.live.hub import Part, get_hub

MAX_FRAME = 4096
REJECT_NOT_FOUND = 4404


def error_frame(message: str) -> str:
    return (
        '<div id="live-error" hx-swap-oob="true" class="live-error" role="alert">'
        f"{escape(message)}</div>"
    )


class LiveConsumer(AsyncWebsocketConsumer):
    """Base: authentication, hub registration, inbound frame checking."""

    topics: set[str]
    grant: access.Grant
    revoked = False
    needs_full = False

    async def connect(self) -> None:
        session = self.scope.get("session")
        found = await database_sync_to_async(access.grant_for)(session and session.session_key)
        if found is None:
            # Accepted, then closed with the reason: a refused handshake reaches
            # the page only as 1006, which it would retry forever; 4401 sends it
            # to the sign-in page. The origin was checked before this point.
            await self.accept()
            await self.revoke(access.SIGNED_OUT)
            return
        self.user, self.grant = found
        self.role = self.grant.role
        if not await self.setup():
            await self.close(code=REJECT_NOT_FOUND)
            return
        await self.accept()
        hub = get_hub()
        hub.gate.note(self.grant)
        since = hub.notified
        shown = {part.key: hub.fresh_page(part.key) for part in self.parts()}
        missing = [key for key, page in shown.items() if page is None]
        if missing:
            shown.update(await database_sync_to_async(self.render_parts)(missing))
            for key in missing:
                hub.rendered(key, shown[key], since)
        await self.deliver("".join(full(page) for page in shown.values()))
        hub.join(self, since, shown)
        self.hub = hub

    async def disconnect(self, code) -> None:
        hub = getattr(self, "hub", None)
        if hub is not None:
            hub.remove(self)

    async def revoke(self, code: int) -> None:
        if not self.revoked:  # the hub and a refresh frame may both find it out
            self.revoked = True
            await self.close(code=code)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.revoked:
            return  # closing: answers nothing more
        if bytes_data is not None or text_data is None:
            await self.send(text_data=error_frame("Binary frames are not understood here."))
            return
        if len(text_data) > MAX_FRAME:
            await self.send(text_data=error_frame("Frame too large; nothing was done."))
            return
        try:
            message = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
            await self.send(text_data=error_frame("Frames must be JSON; nothing was done."))
            return
        if isinstance(message, dict) and message.get("action") == "refresh":
            if await self.hub.admit([self]):
                shown = await database_sync_to_async(self.render_parts)()
                await self.deliver("".join(full(page) for page in shown.values()))
            return
        await self.send(text_data=error_frame("Unknown request; nothing was done."))

    async def deliver(self, html: str) -> None:
        await self.send(text_data=html)

    def query(self) -> dict[str, str]:
        raw = self.scope.get("query_string", b"").decode("utf-8", "replace")
        return dict(parse_qsl(raw, keep_blank_values=True)[:20])

    # Subclasses
    async def setup(self) -> bool:
        raise NotImplementedError

    def parts(self) -> list[Part]:
        raise NotImplementedError

    def render_parts(self, keys=None) -> dict[tuple, Page]:
        """The whole page of every part (or of those with ``keys``), by render key."""
        return {
            part.key: part.render() for part in self.parts() if keys is None or part.key in keys
        }


class TenantDetailConsumer(LiveConsumer):
    async def setup(self) -> bool:
        slug = self.scope["url_route"]["kwargs"]["slug"]
        self.tenant_id = await database_sync_to_async(_tenant_id)(slug)
        if self.tenant_id is None:
            return False
        self.topics = {f"tenant-{self.tenant_id}"}
        self._parts = [
            Part(("detail", self.tenant_id, self.role), frozenset(self.topics), self._detail)
        ]
        return True

    def parts(self):
        return self._parts

    def _detail(self) -> Page:
        from tenants.models import Tenant

        # detail_page reads the tenant afresh by its id: no read of our own first.
        return fragments.detail_page(Tenant(pk=self.tenant_id), role=self.role)[1]


def _tenant_id(slug: str) -> int | None:
    from tenants.lookup import find_tenant  # refuses what cannot be a slug, without a query

    tenant = find_tenant(slug)
    return tenant.pk if tenant else None


class TenantListConsumer(LiveConsumer):
    async def setup(self) -> bool:
        from tenants.filters import list_filters

        self.filters = list_filters(self.query())
        # The user's own topic carries banner dismissals from their other tabs.
        user_topic = f"user-{self.user.pk}"
        self.topics = {"tenants", user_topic}
        filters = tuple(sorted(self.filters.items()))
        self._parts = [
            Part(("list", self.role, filters), frozenset({"tenants"}), self._list),
            # The banner is the user's own: a failure reaches it with "tenants", a
            # dismissal in another tab with the user's topic.
            Part(("banner", self.user.pk), frozenset(self.topics), self._banner),
        ]
        return True

    def parts(self):
        return self._parts

    def _list(self) -> Page:
        return fragments.list_page(role=self.role, **self.filters)[1]

    def _banner(self) -> Page:
        return fragments.banner_page(self.user)


class AuditConsumer(LiveConsumer):
    async def setup(self) -> bool:
        from tenants.filters import audit_filters

        self.filters = audit_filters(self.query())
        self.topics = {"audit"}
        key = ("audit", tuple(sorted(self.filters.items())))
        self._parts = [Part(key, frozenset(self.topics), self._audit)]
        return True

    def parts(self):
        return self._parts

    def _audit(self) -> Page:
        return fragments.audit_page(**self.filters)[1]
