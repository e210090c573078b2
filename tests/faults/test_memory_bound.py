"""A huge body does not raise the daemon's memory for good.

The fault report: a 50 MB body without Content-Length raised a running daemon's RSS
from 67.6 to 104.7 MiB and it stayed there. Here a real ``gpuwarden run`` scrapes a
loopback server that answers the recorded vLLM payload, then three 50 MB chunked
bodies to each of four server entries at once, then the payload again: the scrapes are
refused at the cap and counted, the servers stay monitored, and RSS settles back near
where it was (the old code, run the same way: +9.3 MiB).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.faults.daemon_proc import DaemonProc, wait_for
from tests.faults.pgcluster import free_port

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "metrics"
PAYLOAD = (FIXTURE / "vllm-0.32-cpu-after-load.prom").read_bytes()
HUGE = 50 * 1024 * 1024
SERVERS = 4  # scraped in parallel, as the daemon does: each read is its own thread's


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        if not self.server.huge:
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
            return
        self.send_header("Transfer-Encoding", "chunked")  # no Content-Length to refuse on
        self.end_headers()
        line = b"vllm:num_requests_running{model_name=\"m\"} 1\n" * 1400  # ~64 KB
        sent = 0
        try:
            while sent < HUGE:
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                sent += len(line)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the scraper hung up at its cap, as it should

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    huge = False
    requests = 0


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def oversize_scrapes(daemon: DaemonProc) -> float:
    """``gpuwarden_scrape_errors_total{reason="oversize"}`` (absent until the first)."""
    rows = daemon.metrics().get("gpuwarden_scrape_errors_total", [])
    return sum(v for labels, v in rows if labels.get("reason") == "oversize")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_fifty_megabyte_bodies_leave_no_lasting_rss_growth(tmp_path: Path,
                                                            server: _Server) -> None:
    port = free_port()
    config = tmp_path / "gw.toml"
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    servers = "".join(f'[[servers]]\nname = "vllm-{i}"\nkind = "vllm"\nmetrics_url = "{url}"\n'
                      'timeout = "5s"\n' for i in range(SERVERS))
    config.write_text(
        f'node = "mem"\ninterval = "500ms"\nlisten = "127.0.0.1:{port}"\n'
        f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n[gpu]\nsource = "sim"\n'
        f'sim_gpus = 2\n{servers}')
    daemon = DaemonProc(config, port, tmp_path / "gw.log")
    try:
        daemon.wait_healthy()
        daemon.wait_cycles(20)
        baseline = rss_mib(daemon.pid)
        server.huge = True
        seen = server.requests
        wait_for(lambda: oversize_scrapes(daemon) >= 3 * SERVERS, 90, "oversize scrapes")
        assert server.requests >= seen + 3 * SERVERS
        server.huge = False
        wait_for(lambda: daemon.metric("gpuwarden_server_up") == SERVERS, 20, "servers up")
        time.sleep(2.0)
        after = rss_mib(daemon.pid)
        assert daemon.healthz()[0] == 200
        # Before: +37 MiB for good. The cap is 8 MiB; what a scrape holds while it
        # runs is freed and handed back.
        assert after - baseline < 6, (baseline, after)
    finally:
        daemon.stop()
