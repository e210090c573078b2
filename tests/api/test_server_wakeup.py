"""The HTTP server's accept loop sleeps until a connection or a stop (api/server.py).

socketserver's ``serve_forever`` woke every ``poll_interval`` to look for ``shutdown``;
ours is woken by ``shutdown`` itself. ``service_actions`` runs once per wake-up of the
loop, so counting its calls counts the wake-ups.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from gpuwarden.api import server as server_mod
from gpuwarden.api.quality_push import Headers
from gpuwarden.api.server import HttpServer


class View:
    def metrics_body(self, client: str = "") -> bytes:
        return b"up 1\n"

    def health(self) -> tuple[bool, dict[str, object]]:
        return True, {}

    def alerts_json(self) -> list[dict[str, object]]:
        return []

    def budget_json(self) -> tuple[int, dict[str, object]]:
        return 200, {}

    def push_quality(self, body: bytes, headers: Headers) -> tuple[int, dict[str, object]]:
        return 200, {}


@pytest.fixture
def wakeups(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """When the accept loop of servers made in the test woke up."""
    seen: list[float] = []
    monkeypatch.setattr(server_mod._Server, "service_actions",
                        lambda self: seen.append(time.monotonic()))
    yield seen


def started() -> HttpServer:
    http = HttpServer("127.0.0.1", 0, View())
    http.start()
    return http


def stop_within(http: HttpServer, seconds: float) -> None:
    """``http.stop()`` on a thread; fails if it has not returned after ``seconds``."""
    stopper = threading.Thread(target=http.stop, daemon=True)
    stopper.start()
    stopper.join(seconds)
    assert not stopper.is_alive(), "HttpServer.stop() did not return"


def test_idle_server_does_not_wake_and_serves(wakeups: list[float]) -> None:
    http = started()
    try:
        time.sleep(0.6)  # the stdlib loop (poll_interval 0.2) would have woken ~3 times
        assert wakeups == []
        r = requests.get(f"http://127.0.0.1:{http.port}/metrics", timeout=5)
        assert (r.status_code, r.content) == (200, b"up 1\n")
        assert len(wakeups) >= 1  # the connection woke it
    finally:
        stop_within(http, 10)


def test_stop_wakes_an_idle_server_and_closes_the_port() -> None:
    http = started()
    port = http.port
    requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    stop_within(http, 10)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_stop_with_a_keep_alive_connection_open() -> None:
    http = started()
    with requests.Session() as session:
        assert session.get(f"http://127.0.0.1:{http.port}/healthz", timeout=5).ok
        stop_within(http, 10)  # the connection's handler thread is a daemon thread


def test_stop_of_a_server_never_started() -> None:
    http = HttpServer("127.0.0.1", 0, View())
    stop_within(http, 10)


def test_serve_again_after_shutdown(wakeups: list[float]) -> None:
    """A second serve_forever does not spin on the first stop's wake-up byte."""
    srv = server_mod._Server(("127.0.0.1", 0), View())
    try:
        for _ in range(2):
            loop = threading.Thread(target=srv.serve_forever, daemon=True)
            loop.start()
            port = srv.server_address[1]
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).ok
            srv.shutdown()
            loop.join(10)
            assert not loop.is_alive()
        before = len(wakeups)
        loop = threading.Thread(target=srv.serve_forever, daemon=True)
        loop.start()
        time.sleep(0.3)
        assert len(wakeups) - before <= 1  # at most the one leftover byte, then asleep
        srv.shutdown()
        loop.join(10)
    finally:
        srv.server_close()


def test_binding_does_not_look_the_address_up_in_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPServer's own bind does a reverse DNS lookup of the listen address: a node
    whose resolver hangs would not answer its first scrape until it timed out."""
    looked_up: list[object] = []

    def resolver(*args: object) -> tuple[str, list[str], list[str]]:
        looked_up.append(args)
        raise AssertionError("reverse DNS lookup at bind")

    monkeypatch.setattr(socket, "gethostbyaddr", resolver)
    http = started()
    try:
        assert requests.get(f"http://127.0.0.1:{http.port}/healthz", timeout=5).ok
        assert looked_up == []
    finally:
        stop_within(http, 10)
