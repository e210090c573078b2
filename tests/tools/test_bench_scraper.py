"""The scraper the daemon benchmark times its GETs with (``bench/scraper.py``): it must
make the GETs asked for, on their schedule, over one connection, and fail loudly
rather than time error pages."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.bench_daemon import timed_gets

ROOT = Path(__file__).resolve().parents[2]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Recorder

    def do_GET(self) -> None:
        self.server.requests.append((time.monotonic(), self.path, self.client_address[1]))
        status, body = (200, b"ok\n") if self.path == "/metrics" else (404, b"")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Recorder(ThreadingHTTPServer):
    """A loopback server that notes each GET: (when, path, client port)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.requests: list[tuple[float, str, int]] = []
        super().__init__(("127.0.0.1", 0), _Handler)


@pytest.fixture
def server() -> Iterator[_Recorder]:
    srv = _Recorder()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    thread.join(timeout=5)


def test_count_every_one_connection(server: _Recorder) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    times = timed_gets(url, every=0.2, count=4)
    assert len(times) == 4 and all(0 < t < 5 for t in times)
    when = [r[0] for r in server.requests]
    gaps = [b - a for a, b in itertools.pairwise(when)]
    assert len(when) == 4 and all(0.15 < g < 0.6 for g in gaps), gaps
    assert {r[1] for r in server.requests} == {"/metrics"}
    assert len({r[2] for r in server.requests}) == 1  # kept alive, as Prometheus does


def test_seconds_bound_the_run(server: _Recorder) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    started = time.monotonic()
    times = timed_gets(url, every=0.3, seconds=1.5)
    # Due at 0.3, 0.6, 0.9; the one due at 1.2 is within END_MARGIN_S of the end.
    assert len(times) == 3
    assert time.monotonic() - started < 4


def test_an_error_answer_fails_the_run(server: _Recorder) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/missing"
    done = subprocess.run([sys.executable, "-m", "bench.scraper", url, "--count", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=30, check=False)
    assert done.returncode == 1 and "HTTP 404" in done.stderr and done.stdout == ""
