"""Debian's nginx running deploy/nginx/tenant-console.conf on a free loopback port.

Its own prefix, pid file, temp directories and logs under the test's
directory; started in the foreground (``daemon off``) so the test owns its
process, and stopped by that pid. The deployed file is used as it is, with
only its "SITE:" values replaced.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, stop_process

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SITE_CONF = ROOT / "deploy" / "nginx" / "tenant-console.conf"


def require_nginx() -> None:
    if not Path(NGINX).exists():
        message = "Debian's nginx is not installed (apt-get install nginx; scripts/install.sh does)"
        if os.environ.get("CI") or os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def site_config(*, port: int, routes_file: Path, console_port: int) -> str:
    """The deployed configuration with this test's port, route table and daphne."""
    text = SITE_CONF.read_text()
    for old, new in [
        ("include /srv/console/var/routes/nginx-tenants.conf;", f"include {routes_file};"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{console_port};"),
        ("listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;"),
    ]:
        assert text.count(old) == 1, f"{SITE_CONF} no longer has {old!r} once"
        text = text.replace(old, new)
    return text


class Nginx:
    def __init__(self, prefix: Path, *, port: int, routes_file: Path, console_port: int):
        self.prefix, self.port, self.console = prefix, port, f"127.0.0.1:{console_port}"
        for sub in ("logs", "temp"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        (prefix / "tenant-console.conf").write_text(
            site_config(port=port, routes_file=routes_file, console_port=console_port)
        )
        temp = prefix / "temp"
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(
            f"""
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log notice;
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    log_format edge '$host $request_uri $status upstream=$upstream_addr';
    access_log {prefix}/logs/access.log edge;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {prefix}/tenant-console.conf;
}}
"""
        )
        self.proc = None

    def command(self, *args: str) -> list[str]:
        return [NGINX, "-p", str(self.prefix), "-c", str(self.conf), *args]

    def test_config(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)

    @property
    def reload_command(self) -> str:
        return " ".join(self.command("-s", "reload"))

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command("-g", "daemon off;"),
            stdout=subprocess.DEVNULL,
            stderr=open(self.prefix / "logs" / "stderr.log", "w"),  # noqa: SIM115
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start:\n{self.error_log()}") from None
                time.sleep(0.05)

    def access_log(self) -> list[str]:
        path = self.prefix / "logs" / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10, group=True)
