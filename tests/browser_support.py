"""A real console for browser tests: daphne and qcluster on the test database,
driven by Playwright in Debian's Chromium (never a downloaded browser)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Cluster, stop_process, subprocess_env

SCREENSHOTS = os.environ.get("SCREENSHOTS_DIR")  # set to refresh docs/screenshots

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daphne:
    """The console's ASGI app served by daphne, as in production."""

    def __init__(self, tmp_path: Path, port: int | None = None, **env):
        self.port = port or free_port()
        self.log_path = tmp_path / f"daphne-{self.port}.log"
        self.env = {k: str(v) for k, v in env.items()}
        self.start()

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def start(self) -> None:
        self.log = open(self.log_path, "a")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "console.asgi:application"],
            cwd=ROOT,
            # SITE_URL is the page's origin, which the console's websockets require.
            env=subprocess_env(
                **{"BASE_DOMAIN": f"localhost:{self.port}", "SITE_URL": self.url, **self.env}
            ),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"daphne did not start:\n{self.log_path.read_text()}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc, timeout=10, group=True)
        self.log.close()

    def restart(self) -> None:
        """Drop every socket server-side, then serve again on the same port."""
        self.stop()
        self.start()


@contextlib.contextmanager
def served_console(settings, tmp_path: Path):
    """daphne serving console.asgi on a free port, and an httpx client for it.

    This process agrees on BASE_DOMAIN and starts from fresh routes and backend health.
    """
    from provisioning.traffic import health, routing

    port = free_port()
    settings.BASE_DOMAIN = f"localhost:{port}"
    settings.ROUTES_FILE = str(tmp_path / "routes" / "nginx-tenants.conf")
    routing.forget()
    health.reset()
    server = Daphne(tmp_path, port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


def shot(page, name: str) -> None:
    """A full-page screenshot for the docs, taken only when SCREENSHOTS_DIR is set."""
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def require_chromium() -> None:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI") or os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture
def console(transactional_db, tmp_path, plans):
    """daphne + a real qcluster on the test database."""
    port = free_port()
    # Workers compute tenants' URLs too: same BASE_DOMAIN as the console.
    cluster = Cluster(tmp_path, PROVISIONING_BACKOFF_BASE="0.3", BASE_DOMAIN=f"localhost:{port}")
    server = Daphne(tmp_path, port)
    yield server
    server.stop()
    cluster.stop()


@pytest.fixture(scope="module")
def chromium():
    """One Chromium per test module.

    Playwright's sync API runs an event loop in this thread, which makes
    Django refuse ORM calls from the test ("async context"). The tests' ORM
    calls are plain sync code, so the check is lifted while the browser
    lives, and only then: module scope ends the loop with the module.
    """
    require_chromium()
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def sign_in(chromium, base_url: str, user, *, password=None, viewport=None):
    """A fresh browser context signed in as ``user`` at ``base_url``, and its page."""
    context = chromium.new_context(viewport=viewport or {"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(base_url + "/accounts/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", password or "pw-" + user.username * 2)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    return context, page


@pytest.fixture
def open_page(chromium, console, request):
    """open_page(user, path) -> a signed-in page in a fresh browser context."""
    contexts = []

    def open_(user, path="/", *, password=None, viewport=None):
        context, page = sign_in(chromium, console.url, user, password=password, viewport=viewport)
        contexts.append(context)
        if path != "/":
            page.goto(console.url + path)
        return page

    yield open_
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        # Leave what the browser showed for whoever reads the failure.
        out = Path(os.environ.get("BROWSER_ARTIFACTS", "/tmp/browser-failures"))
        out.mkdir(parents=True, exist_ok=True)
        for n, context in enumerate(contexts):
            for m, page in enumerate(context.pages):
                stem = out / f"{request.node.name}-{n}-{m}"
                page.screenshot(path=f"{stem}.png", full_page=True)
                Path(f"{stem}.html").write_text(page.content())
        print(f"browser screenshots in {out}; daphne log: {console.log_path}")
    for context in contexts:
        context.close()
