"""Which docker SDK errors mean "the engine is unreachable or restarting".

Every exception here is raised by the real docker SDK talking to a real
socket: a closed TCP port, a socket file that does not exist, and a small
HTTP server on a unix socket that answers as a stopping dockerd does (a 5xx)
or never answers (a timeout). No engine is needed, so nothing is skipped.
"""

from __future__ import annotations

import json
import smtplib
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler

import docker
import docker.errors
import pytest

from provisioning.drivers.docker_driver import DockerDriver
from provisioning.errors import (
    EngineOutage,
    PermanentError,
    StepError,
    TransientError,
    classify,
)

API_VERSION = "1.41"  # given, so that making a client does not ask the engine first


def _raised(call) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("the call raised nothing")


def _closed_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


class _Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serve(path, status: int | None, message: str = ""):
    """A unix-socket HTTP server that answers every request with ``status`` and
    dockerd's error body, or (status None) reads the request and never answers."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            if status is None:
                release.wait(10)
                return
            body = json.dumps({"message": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815

        def address_string(self):
            return "unix"

        def log_message(self, *args):
            pass

    server = _Engine(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, release


@pytest.fixture
def fake_engine(tmp_path):
    """Start servers on sockets under tmp_path; returns ``start(status, message) -> base_url``."""
    running = []

    def start(status, message=""):
        path = tmp_path / f"engine{len(running)}.sock"
        running.append(_serve(path, status, message))
        return f"unix://{path}"

    yield start
    for server, release in running:
        release.set()
        server.shutdown()
        server.server_close()


def _client(base_url, timeout=5):
    return docker.DockerClient(base_url=base_url, version=API_VERSION, timeout=timeout)


def _assert_outage(exc: BaseException) -> StepError:
    error = classify(exc)
    assert isinstance(error, EngineOutage), f"{exc!r} was classified as {error!r}"
    assert error.outage is True
    assert error.transient is True
    assert error.category == "docker_unreachable"
    return error


def _assert_not_outage(exc: BaseException) -> StepError:
    error = classify(exc)
    assert error.outage is False, f"{exc!r} was classified as an engine outage"
    return error


def test_a_refused_tcp_connection_is_an_outage():
    exc = _raised(_client(f"tcp://127.0.0.1:{_closed_tcp_port()}").ping)
    _assert_outage(exc)


def test_a_missing_unix_socket_is_an_outage(tmp_path):
    exc = _raised(_client(f"unix://{tmp_path}/gone.sock").ping)
    _assert_outage(exc)


def test_making_a_client_while_the_socket_is_missing_is_an_outage(tmp_path):
    # Without an API version the SDK asks the engine for one at once, and
    # wraps the refused connection in a plain DockerException.
    exc = _raised(lambda: docker.DockerClient(base_url=f"unix://{tmp_path}/gone.sock"))
    assert type(exc) is docker.errors.DockerException
    _assert_outage(exc)


def test_a_daemon_that_is_shutting_down_is_an_outage(fake_engine):
    url = fake_engine(500, "Cannot create container: daemon is shutting down")
    exc = _raised(_client(url).containers.list)
    assert isinstance(exc, docker.errors.APIError) and exc.status_code == 500
    _assert_outage(exc)


def test_a_503_from_the_engine_is_an_outage(fake_engine):
    exc = _raised(_client(fake_engine(503, "service unavailable")).ping)
    _assert_outage(exc)


def test_an_engine_that_does_not_answer_in_time_is_an_outage(fake_engine):
    exc = _raised(_client(fake_engine(None), timeout=0.3).ping)
    _assert_outage(exc)


def test_other_server_errors_keep_their_own_budget(fake_engine):
    url = fake_engine(
        500, "driver failed programming external connectivity: port is already allocated"
    )
    error = _assert_not_outage(_raised(_client(url).containers.list))
    assert isinstance(error, TransientError) and error.category == "port_in_use"

    url = fake_engine(500, "error creating overlay mount: no space left on device")
    error = _assert_not_outage(_raised(_client(url).containers.list))
    assert error.transient and error.category == "docker_unreachable"


def test_a_client_error_is_permanent_and_not_an_outage(fake_engine):
    exc = _raised(_client(fake_engine(400, "invalid reference format")).containers.list)
    error = _assert_not_outage(exc)
    assert isinstance(error, PermanentError)


def test_a_refused_connection_elsewhere_is_not_an_engine_outage():
    port = _closed_tcp_port()
    exc = _raised(lambda: smtplib.SMTP("127.0.0.1", port, timeout=2))
    assert isinstance(exc, ConnectionRefusedError)
    _assert_not_outage(exc)


def test_every_other_step_error_says_it_is_no_outage():
    assert StepError("x").outage is False
    assert TransientError("x").outage is False
    assert PermanentError("x").outage is False


def test_the_driver_raises_an_outage_when_the_engine_is_down(tmp_path):
    driver = DockerDriver(client=_client(f"unix://{tmp_path}/gone.sock"))
    with pytest.raises(EngineOutage) as err:
        driver.ping()
    assert err.value.outage and err.value.category == "docker_unreachable"
    with pytest.raises(EngineOutage):
        driver.list_replicas("t1-acme")
