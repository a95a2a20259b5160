"""The tenant workload for machines without a Docker Engine.

One process serves one replica: ``/`` is the tenant's landing page, ``/healthz``
answers ``ok``. Standard library only, so that starting a replica costs a
Python start-up and nothing more (no Django import).

    python -m provisioning.drivers.workload_server --port 0 --port-file PATH

With ``--port 0`` the kernel picks a free port; the server writes the port it
actually bound to ``--port-file`` (atomically) so the driver that started it
can read it without racing another process for the same port.
"""

from __future__ import annotations

import argparse
import html
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The landing page. The Docker image renders the same template from its shell
# entrypoint (see docker_driver), so keep it free of "$", "`" and "\", which a
# shell here-document would expand.
PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{slug}-{org}</title></head>
<body>
<h1>Welcome to tenant {slug}-{org}</h1>
<p>This workload is served by replica {replica} of tenant {slug}-{org}.</p>
</body>
</html>
"""


def render_page(slug: str, org: str, replica: str) -> str:
    return PAGE.format(
        slug=html.escape(slug), org=html.escape(org), replica=html.escape(str(replica))
    )


class Handler(BaseHTTPRequestHandler):
    server_version = "tenant-workload/1"

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok", "text/plain; charset=utf-8")
        elif path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        else:
            self._send(404, b"not found", "text/plain; charset=utf-8")

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code="-", size="-"):
        # Readiness probes would flood the log file; keep errors only.
        if isinstance(code, int) and code >= 400:
            super().log_request(code, size)


def write_port_file(path: str, port: int) -> None:
    # Write then rename, so a reader never sees an empty or partial file.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    # Only there so that the driver can recognise its process in /proc/<pid>/cmdline.
    parser.add_argument("--name", default="")
    args = parser.parse_args(argv)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.page = render_page(
        os.environ.get("TENANT_SLUG", "unknown"),
        os.environ.get("TENANT_ORG", "unknown"),
        os.environ.get("REPLICA", "1"),
    ).encode()

    # serve_forever() must be stopped from another thread; a signal handler runs
    # in the main thread, which is the one blocked in serve_forever().
    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    port = server.server_address[1]
    if args.port_file:
        write_port_file(args.port_file, port)
    print(f"workload {args.name} serving on {args.host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print(f"workload {args.name} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
