"""HTTP readiness of one replica, as the wait_ready step sees it."""

from __future__ import annotations

import http.client

from .base import Replica


def probe(replica: Replica, timeout: float = 1.0) -> tuple[bool, str]:
    """GET /healthz on the replica; (ready, short reason). Never raises.

    The reason is what an operator reads next to the replica: "200 ok",
    "HTTP 503", "connection refused", "timed out", ...
    """
    if not replica.port:
        return False, "no published port"
    conn = http.client.HTTPConnection(replica.host, replica.port, timeout=timeout)
    try:
        conn.request("GET", "/healthz", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read(256).decode("utf-8", "replace").strip()
        if resp.status == 200:
            return True, f"200 {body}" if body else "200"
        return False, f"HTTP {resp.status}"
    except ConnectionRefusedError:
        return False, "connection refused"
    except http.client.RemoteDisconnected:
        # (A ConnectionResetError, so caught first.) The engine's port proxy
        # accepts the connection and closes it while the container's server
        # is not listening yet.
        return False, "connection closed"
    except ConnectionResetError:
        return False, "connection reset"
    except TimeoutError:
        return False, "timed out"
    except Exception as exc:  # anything else (OSError, HTTPException, ...): never raise
        return False, f"{exc.__class__.__name__}: {exc}"[:200]
    finally:
        conn.close()
