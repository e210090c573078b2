"""The first cycle is collected and stored before the heavy libraries load.

Time to the first stored sample is a benchmark figure (bench/bench_daemon.py); what a
test can pin without a clock is the cause of a regression: everything ``gpuwarden run``
imports up to its early SQLite write must stay free of SQLAlchemy, numpy, scipy,
prometheus_client and APScheduler (together ~0.5 s of imports on a small VM).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("sqlalchemy", "numpy", "scipy", "prometheus_client", "apscheduler")


def test_the_path_to_the_first_stored_sample_imports_nothing_heavy(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'node = "n"\n[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
                      '[gpu]\nsource = "sim"\n[[servers]]\nname = "v"\nkind = "vllm"\n'
                      'metrics_url = "http://127.0.0.1:9/metrics"\n')
    code = f"""
import sys
from gpuwarden.cli.main import build_parser
args = build_parser().parse_args(["run", "--config", {str(config)!r}])
from gpuwarden.config import load_config
from gpuwarden.daemon.wiring import build_collectors
import gpuwarden.storage.early, requests
config = load_config(args.config)
session = requests.Session()
samples = [s for c in build_collectors(config, lambda: session) for s in c.collect()]
assert any(s.signal == "server_up" for s in samples) and len(samples) > 10
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "", f"imported before the first write: {out.stdout.strip()}"


def test_a_node_scraping_plain_http_servers_never_imports_requests(tmp_path: Path) -> None:
    """``requests`` (~4 MiB of RSS) is for https, credentials, redirects and deliveries:
    a daemon whose servers are plain http (fetched with libcurl) and that has no
    receiver runs its cycles, alert rules and delivery threads without importing it.
    prometheus_client (~1.8 MiB) it never imports: it writes the text format itself."""
    fixture = Path(__file__).parent / "fixtures" / "metrics" / "vllm-0.32-cpu-after-load.prom"
    code = """
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

body = Path(FIXTURE).read_bytes()
db = DATABASE


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon

config = parse_config(
    f'node = "n"\\ninterval = "10s"\\nlisten = "127.0.0.1:{port}"\\n[storage]\\n'
    f'url = "sqlite:///{db}"\\n[gpu]\\nsource = "sim"\\n[[servers]]\\nname = "v"\\n'
    f'kind = "vllm"\\nmetrics_url = "http://127.0.0.1:{server.server_address[1]}/metrics"\\n')
daemon = Daemon(config)
daemon.start()
try:
    for _ in range(3):
        samples = daemon.run_cycle()
        assert [s.value for s in samples if s.signal == "server_up"] == [1.0], samples
        assert any(s.signal == "kv_cache_usage_ratio" for s in samples)
finally:
    daemon.shutdown()
print(",".join(m for m in ("requests", "charset_normalizer", "certifi", "prometheus_client")
               if m in sys.modules))
""".replace("FIXTURE", repr(str(fixture))).replace("DATABASE", repr(str(tmp_path / "gw.db")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"
