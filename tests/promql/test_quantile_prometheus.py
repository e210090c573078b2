"""histogram_quantile of gpuwarden against the Prometheus binary installed here.

The bucket sets of Prometheus' own monotonicity test (``UPSTREAM_CASES`` in
test_quantile.py) are served on loopback and scraped by a real Prometheus, which is
then asked each quantile. Where the counts carry no float noise, every Prometheus
release answers what gpuwarden answers. Where they do, releases before 2.49 (Debian's
2.42 among them) lack the small-delta tolerance and answer the far edge of a bucket
that holds only noise at q=1; gpuwarden answers as 2.49 and later do. The test checks
whichever the installed binary is: the documented difference for an older one, equality
for a newer one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpuwarden.promql.quantile import histogram_quantile
from tests.promql.test_quantile import UPSTREAM_CASES
from tests.promserver import PromServer, prometheus_binary, static_job

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

QUANTILES = (1.0, 0.99, 0.9, 0.5)
# What Prometheus before 2.49 answers at q=1 on the noisy sets (the figures).
BEFORE_2_49_AT_1 = {"step, noisy": 20.0, "46M, noisy": 80.0, "rate, noisy": 10.0}


def _label(name: str) -> str:
    return name.replace(", ", "_").replace(" ", "_")


def _payload() -> bytes:
    lines = ["# TYPE h histogram"]
    for name, (bounds, counts, _) in sorted(UPSTREAM_CASES.items()):
        for le, count in zip(bounds, counts, strict=True):
            edge = "+Inf" if le == math.inf else repr(le)
            lines.append(f'h_bucket{{case="{_label(name)}",le="{edge}"}} {count!r}')
    return ("\n".join(lines) + "\n").encode()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = _payload()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromServer]:
    if prometheus_binary() is None:
        pytest.skip("prometheus binary not found (Debian package 'prometheus'); CI installs it")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    workdir: Path = tmp_path_factory.mktemp("prom-quantile")
    try:
        target = f"127.0.0.1:{server.server_address[1]}"
        with PromServer(workdir, scrape_configs=[static_job("q", target)]) as p:
            deadline = time.monotonic() + 30
            while len(p.query("h_bucket")) < sum(len(b) for b, _, _ in UPSTREAM_CASES.values()):
                assert time.monotonic() < deadline, f"not scraped in 30 s: {p.log_tail()}"
                time.sleep(0.2)
            yield p
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _version(prom: PromServer) -> tuple[int, int]:
    major, minor, *_ = str(prom.api("status/buildinfo")["version"]).split(".")
    return int(major), int(minor)


def test_prometheus_answers_the_upstream_cases_as_documented(prom: PromServer) -> None:
    tolerant = _version(prom) >= (2, 49)
    compared = 0
    for q in QUANTILES:
        theirs = {r["metric"]["case"]: float(r["value"][1])
                  for r in prom.query(f"histogram_quantile({q}, h_bucket)")}
        for name, (bounds, counts, _) in UPSTREAM_CASES.items():
            ours = histogram_quantile(q, list(zip(bounds, counts, strict=True)))
            got = theirs[_label(name)]
            if tolerant or name not in BEFORE_2_49_AT_1:
                assert got == pytest.approx(ours, rel=1e-12), (name, q)
            elif q == 1.0:
                assert got == BEFORE_2_49_AT_1[name] != ours, (name, got, ours)
            else:  # noise moves an older release's answer by far less than this
                assert got == pytest.approx(ours, rel=1e-9), (name, q)
            compared += 1
    assert compared == len(QUANTILES) * len(UPSTREAM_CASES)
