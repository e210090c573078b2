"""The scrape session: a kept connection per server, however many, and no proxy from the
environment between gpuwarden and the node's own servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from gpuwarden.collector.scrape import ServerCollector
from gpuwarden.collector.session import MAX_TARGETS, scrape_session

PAYLOAD = (Path(__file__).parent.parent / "fixtures" / "metrics"
           / "vllm-0.32-cpu-after-load.prom").read_bytes()


class CountingServer(ThreadingHTTPServer):
    """A vLLM-like /metrics on loopback that counts the TCP connections it accepted."""

    daemon_threads = True

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's uvicorn answers

            def setup(self) -> None:
                super().setup()
                server.connections += 1

            def do_GET(self) -> None:
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)

            def log_message(self, *args: object) -> None:
                pass

        server = self
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/metrics"


@pytest.fixture
def servers() -> Iterator[list[CountingServer]]:
    # More than requests' default of ten pools: the case that used to reconnect.
    running = [CountingServer() for _ in range(16)]
    try:
        yield running
    finally:
        for server in running:
            server.shutdown()
            server.server_close()


def _collectors(servers: list[CountingServer],
                session: requests.Session) -> list[ServerCollector]:
    return [ServerCollector("node-a", f"vllm-{i}", "vllm", s.url, session, timeout=2.0)
            for i, s in enumerate(servers)]


def test_sixteen_servers_are_scraped_over_one_kept_connection_each(
        servers: list[CountingServer]) -> None:
    session = scrape_session()
    collectors = _collectors(servers, session)
    try:
        for _ in range(5):  # five cycles, the servers in turn as the runner's pool does
            for collector in collectors:
                up = [s for s in collector.collect() if s.signal == "server_up"]
                assert [s.value for s in up] == [1.0]
    finally:
        session.close()
    assert [s.requests for s in servers] == [5] * 16
    assert [s.connections for s in servers] == [1] * 16
    assert len(servers) < MAX_TARGETS


def test_a_plain_session_reconnects_past_ten_servers(servers: list[CountingServer]) -> None:
    """The reference: requests' defaults (ten pools) open a connection per scrape here."""
    session = requests.Session()
    collectors = _collectors(servers, session)
    try:
        for _ in range(3):
            for collector in collectors:
                collector.collect()
    finally:
        session.close()
    assert sum(s.connections for s in servers) > 16


def test_the_environments_proxy_does_not_come_between_gpuwarden_and_its_servers(
        servers: list[CountingServer], monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy nobody listens on: a scrape sent through it would fail.
    port = closed_port()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = scrape_session()
    try:
        samples = list(_collectors(servers[:1], session)[0].collect())
    finally:
        session.close()
    up = [s.value for s in samples if s.signal == "server_up"]
    assert up == [1.0]
    assert servers[0].requests == 1


def closed_port() -> int:
    """A loopback port that was bound and closed: nothing listens on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
