"""Live pages over unusual paths: a proxy that goes silent, and several daphne processes.

- A TCP relay between the browser and daphne stops forwarding an open socket
  without closing it (as a proxy or load balancer can); the page, hearing no
  heartbeat for two intervals, says "Reconnecting…", opens a new socket
  (through the same relay, which forwards new connections) and gets the full
  state, including what changed while it was cut off.
- Two daphne processes on one database: a tab on each; an action in one tab
  appears in the other, and both show the same states.
"""

from __future__ import annotations

import socket
import threading

import pytest
from django.db import transaction
from django.utils.timezone import now
from playwright.sync_api import expect

from provisioning.audit import record_event
from provisioning.models import StepLogLine
from tenants.models import Tenant
from tests.browser_support import Daphne, free_port, sign_in
from tests.conftest import new_tenant

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HEARTBEAT = 1.0  # seconds: the page gives up on a socket after two of them


class Relay:
    """A TCP relay to 127.0.0.1:``upstream`` on a port of its own; ``mute()`` cuts the
    connections open now without closing them (new ones are forwarded)."""

    def __init__(self, port: int, upstream: int):
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = port
        self.lock = threading.Lock()
        self.connections: list[dict] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            conn = {"muted": False, "sockets": (client, upstream)}
            with self.lock:
                self.connections.append(conn)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(conn, src, dst), daemon=True).start()

    def _pump(self, conn: dict, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                if not conn["muted"]:
                    # Pass the close on; a muted connection stays open both ways.
                    for s in conn["sockets"]:
                        s.close()
                return
            if conn["muted"]:
                continue  # swallowed: neither side hears a thing, nor a close
            try:
                dst.sendall(data)
            except OSError:
                return

    def mute(self) -> int:
        with self.lock:
            for conn in self.connections:
                conn["muted"] = True
            return len(self.connections)

    def close(self) -> None:
        self.server.close()
        with self.lock:
            for conn in self.connections:
                for s in conn["sockets"]:
                    s.close()


def note_states(page) -> None:
    """Record every state the live indicator takes, in ``window.liveStates``."""
    page.evaluate(
        """() => {
          const el = document.getElementById("live-indicator");
          window.liveStates = [el.dataset.state];
          new MutationObserver(() => window.liveStates.push(el.dataset.state))
            .observe(el, {attributes: true, attributeFilter: ["data-state"]});
        }"""
    )


def test_a_page_whose_socket_a_proxy_silently_stops_reconnects_and_catches_up(
    chromium, operator, plans, tmp_path
):
    relay_port = free_port()
    relay_url = f"http://localhost:{relay_port}"
    # The page's origin is the relay's: the console must accept its websockets.
    server = Daphne(tmp_path, SITE_URL=relay_url, LIVE_HEARTBEAT_SECONDS=HEARTBEAT)
    relay = Relay(relay_port, server.port)
    context = None
    try:
        tenant = new_tenant("quiet", user=operator)
        context, page = sign_in(chromium, relay_url, operator)
        page.goto(f"{relay_url}/tenants/quiet/")
        expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
        note_states(page)
        assert relay.mute() >= 1  # the page's socket (and its HTTP keep-alive) go silent
        with transaction.atomic():
            event = record_event(
                "tenant.provisioning.reset", tenant=tenant, details={"attempt": 1, "reason": "x"}
            )
        # Nothing arrives on the cut socket; within two heartbeats the page notices,
        # reconnects through the relay, and the full state brings the change.
        expect(page.locator(f"#event-{event.seq}")).to_be_visible(timeout=4 * HEARTBEAT * 1000)
        expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
        states = page.evaluate("window.liveStates")
        assert "reconnecting" in states and states[-1] == "live", states
    finally:
        if context is not None:
            context.close()
        relay.close()
        server.stop()


def test_tabs_on_two_daphne_processes_see_each_others_actions(chromium, operator, plans, tmp_path):
    # Two processes of one installation: the same settings, each on its own port.
    first = Daphne(tmp_path, BASE_DOMAIN="console.test")
    second = Daphne(tmp_path, BASE_DOMAIN="console.test")
    contexts = []
    try:
        new_tenant("twin", user=operator)
        tabs = []
        for server in (first, second):
            context, page = sign_in(chromium, server.url, operator)
            contexts.append(context)
            page.goto(f"{server.url}/tenants/twin/")
            expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
            tabs.append(page)
        for page in tabs:
            expect(page.locator(".badge--provisioning").first).to_be_visible()
        # Cancel in the tab served by the first process ...
        tabs[0].get_by_role("button", name="Cancel provisioning").click()
        tabs[0].locator("#dialog-cancel textarea").fill("two processes")
        tabs[0].locator("#dialog-cancel button[type=submit]").click()
        # ... and the tab on the second process hears it from the database.
        for page in tabs:
            expect(page.locator("#tenant-events")).to_contain_text("Cancel requested")
            expect(page.locator("#tenant-events")).to_contain_text("two processes")
            expect(page.locator("#actions")).to_contain_text("cancel of twin is already under way")
        assert Tenant.objects.get(slug="twin").runs.get().cancel_requested
        # The same rows, the same page: both tabs render the same regions.
        regions = ["#tenant-header", "#step-line", "#timeline", "#actions", "#tenant-events"]
        shown = [[page.locator(r).inner_text() for r in regions] for page in tabs]
        assert shown[0] == shown[1]
    finally:
        for context in contexts:
            context.close()
        first.stop()
        second.stop()


def test_a_log_panel_the_user_opened_stays_open_when_its_step_changes(operator, open_page, plans):
    """Pushes morph the page (idiomorph): what the user opened stays open."""
    tenant = new_tenant("morph", user=operator)
    run = tenant.runs.get()
    step = run.steps.get(step_id="validate")
    for n in range(40):
        StepLogLine.objects.create(step=step, message=f"checking {n}")
    with transaction.atomic():
        record_event("tenant.provisioning.reset", tenant=tenant, details={"attempt": 1})
    page = open_page(operator, "/tenants/morph/")
    expect(page.locator("body")).to_have_attribute("data-live-synced", "true")
    log = page.locator("#step-validate details.step-log")
    log.locator("summary").click()
    expect(log).to_have_attribute("open", "")
    page.locator("#step-validate pre").evaluate("pre => { pre.scrollTop = 60; }")
    # The step changes: its row is pushed again, without "open".
    with transaction.atomic():
        StepLogLine.objects.create(step=step, message="one more line")
        run.steps.filter(pk=step.pk).update(status="running", attempts=1, started_at=now())
        record_event("tenant.provisioning.step_started", tenant=tenant, details={"step": "x"})
    expect(page.locator("#step-validate")).to_contain_text("one more line")
    expect(log).to_have_attribute("open", "")
    assert page.locator("#step-validate pre").evaluate("pre => pre.scrollTop") == 60
