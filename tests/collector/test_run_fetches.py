"""The collector runner with scrapes of plain-http servers: their transfers run at once on
the runner's thread (``curl_fetch.MultiFetch``), against real HTTP servers on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpuwarden.collector.run import CollectorRunner
from gpuwarden.collector.scrape import ServerCollector
from gpuwarden.collector.session import scrape_session
from gpuwarden.model import Sample
from tests.collector.test_run import Fixed, family, up

PAYLOAD = (Path(__file__).resolve().parent.parent / "fixtures" / "metrics"
           / "vllm-0.32-cpu-kv-pressure.prom").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        srv = self.server
        srv.requests += 1
        if srv.hold.is_set():
            srv.released.wait(10)
        else:
            srv.released.wait(srv.delay)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests = 0
    connections = 0
    delay = 0.0

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hold = threading.Event()  # set: answer only once released
        self.released = threading.Event()

    def process_request_thread(self, request: socket.socket,  # type: ignore[override]
                               client_address: tuple[str, int]) -> None:
        self.connections += 1
        super().process_request_thread(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/metrics"


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    made = [_Server() for _ in range(4)]
    for srv in made:
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield made
    for srv in made:
        srv.released.set()
        srv.shutdown()
        srv.server_close()


def collectors(servers: list[_Server], timeout: float = 2.0) -> list[ServerCollector]:
    session = scrape_session()
    return [ServerCollector("n", f"s{i}", "vllm", srv.url, session, timeout)
            for i, srv in enumerate(servers)]


def up_of(samples: list[Sample]) -> dict[str, float]:
    return {dict(s.labels)["server"]: s.value for s in samples if s.signal == "server_up"}


def test_servers_are_scraped_at_once_on_kept_connections(servers: list[_Server]) -> None:
    """Four servers that each take 0.3 s to answer: one run takes about that, not four
    times it, and three runs use one connection per server."""
    for srv in servers:
        srv.delay = 0.3
    runner = CollectorRunner([*collectors(servers), Fixed("sim", [up("0")])])
    try:
        for _ in range(3):
            started = time.monotonic()
            samples = runner.run(5.0)
            assert time.monotonic() - started < 1.0  # not 4 x 0.3 s one after another
            assert up_of(samples) == {"s0": 1.0, "s1": 1.0, "s2": 1.0, "s3": 1.0}
            assert any(s.signal == "kv_cache_usage_ratio" for s in samples)
            assert up("0").labels in [s.labels for s in samples]  # the pool's collector too
        assert [srv.requests for srv in servers] == [3, 3, 3, 3]
        assert [srv.connections for srv in servers] == [1, 1, 1, 1]
        success = family(runner.metrics(), "collector_success")
        assert all(v == 1.0 for v in success.values()) and len(success) == 5
    finally:
        runner.close()


def test_a_hung_server_costs_the_deadline_and_is_not_asked_again(
        servers: list[_Server]) -> None:
    """A server that holds its answer: each run returns at its deadline with the others'
    samples; the hung scrape counts as a failed run each cycle and is not sent again
    while it runs; once the server answers (within its timeout) its samples come back."""
    hung = servers[0]
    hung.hold.set()
    runner = CollectorRunner(collectors(servers, timeout=5.0))
    try:
        for _ in range(3):
            started = time.monotonic()
            got = up_of(runner.run(0.2))
            assert time.monotonic() - started < 1.0
            assert got == {"s1": 1.0, "s2": 1.0, "s3": 1.0}
        assert hung.requests == 1
        errors = family(runner.metrics(), "collector_errors")
        assert errors[(("collector", "server:s0"),)] == 3
        assert errors[(("collector", "server:s1"),)] == 0
        hung.hold.clear()
        hung.released.set()
        deadline = time.monotonic() + 5
        got = {}
        while "s0" not in got and time.monotonic() < deadline:
            got = up_of(runner.run(0.5))
        assert got.get("s0") == 1.0
        assert family(runner.metrics(), "collector_success")[(("collector", "server:s0"),)] == 1.0
    finally:
        runner.close()


def test_a_server_that_never_answers_times_out_as_its_timeout_says(
        servers: list[_Server]) -> None:
    hung = servers[0]
    hung.hold.set()
    (collector,) = collectors([hung], timeout=0.3)
    runner = CollectorRunner([collector])
    try:
        deadline = time.monotonic() + 5
        got: dict[str, float] = {}
        while not got and time.monotonic() < deadline:
            got = up_of(runner.run(0.2))
        assert got == {"s0": 0.0}
        assert collector.scrape_errors_total == {"timeout": 1}
    finally:
        runner.close()


def test_a_closed_runner_stops_its_transfers(servers: list[_Server]) -> None:
    hung = servers[0]
    hung.hold.set()
    runner = CollectorRunner(collectors([hung], timeout=5.0))
    runner.run(0.1)
    started = time.monotonic()
    runner.close()
    assert time.monotonic() - started < 1.0
