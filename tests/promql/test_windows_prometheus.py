"""gpuwarden.promql.windows against the real Prometheus (Debian 2.42), on the same raw samples.

A loopback HTTP server plays a vLLM ``/metrics`` whose inter-token-latency histogram
(vLLM's real bucket edges) and token counter grow randomly on every scrape, with one
server restart (all counters back near zero), a phase of heavy-tailed latencies (p99
in the ``+Inf`` bucket) and a quiet phase (no observations: NaN quantiles). Prometheus
scrapes it every second for ~30 s. We then read back the raw samples it stored
(``x[5m]`` returns each sample with its exact timestamp), evaluate
``histogram_quantile(q, increase(x_bucket[10s]))``, ``increase`` and ``rate`` through
its API at many ``time=`` values (exactly on scrape timestamps, 1 ms either side, and
half-way between), and require our functions to give the same answers on the same
samples (rel 1e-6; NaN == NaN; "no output" == None).
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpuwarden.model import SeriesData, make_labels
from gpuwarden.promql.quantile import window_quantile
from gpuwarden.promql.windows import increase, rate
from tests.promserver import PromServer, prometheus_binary, static_job

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

HIST = "vllm:inter_token_latency_seconds"
COUNTER = "vllm:generation_tokens_total"
EDGES = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
         20.0, 40.0, 80.0, math.inf)  # fmt: skip
LABELS = 'engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"'
WINDOW_S = 10
SCRAPES = 30  # scrape n: 1-10 traffic, 11 restart, 12-15 heavy tail, 16-18 traffic, 19+ quiet
RESTART_AT, HEAVY, QUIET_FROM = 11, range(12, 16), 19
QUANTILES = (0.5, 0.95, 0.99)


def _le(edge: float) -> str:
    return "+Inf" if edge == math.inf else repr(edge)


@dataclass
class FakeVllm:
    """Counts that grow per scrape; the restart zeroes them as a real restart would."""

    rng: random.Random = field(default_factory=lambda: random.Random(20240611))
    scrapes: int = 0
    per_bucket: list[int] = field(default_factory=lambda: [0] * len(EDGES))
    total: float = 0.0
    tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _observe(self, n: int, heavy: bool) -> None:
        for _ in range(n):
            x = self.rng.lognormvariate(math.log(0.08), 0.8)
            if heavy and self.rng.random() < 0.1:
                x = self.rng.uniform(81.0, 200.0)  # beyond the last finite edge
            self.per_bucket[next(i for i, e in enumerate(EDGES) if x <= e)] += 1
            self.total += x

    def render(self) -> bytes:
        with self.lock:
            self.scrapes += 1
            n = self.scrapes
            if n == RESTART_AT:
                self.per_bucket, self.total, self.tokens = [0] * len(EDGES), 0.0, 0
                self._observe(self.rng.randint(1, 5), heavy=False)
                self.tokens = self.rng.randint(1, 5)
            elif n < QUIET_FROM:
                self._observe(self.rng.randint(0, 40), heavy=n in HEAVY)
                # 10 then +15: the first windows reach back past the series start and
                # the zero point (10/15 s before the first sample) lies between half a
                # spacing and the 1.1-spacing threshold, where 2.42 and 3.x differ.
                self.tokens += {1: 10, 2: 15}.get(n, self.rng.randint(0, 60))
            lines = [
                f"# HELP {HIST} Histogram of inter-token latency in seconds.",
                f"# TYPE {HIST} histogram",
            ]
            cumulative = 0
            for edge, count in zip(EDGES, self.per_bucket, strict=True):
                cumulative += count
                lines.append(f'{HIST}_bucket{{{LABELS},le="{_le(edge)}"}} {cumulative}.0')
            lines += [
                f"{HIST}_count{{{LABELS}}} {cumulative}.0",
                f"{HIST}_sum{{{LABELS}}} {self.total!r}",
                f"# HELP {COUNTER} Number of generation tokens processed.",
                f"# TYPE {COUNTER} counter",
                f"{COUNTER}{{{LABELS}}} {self.tokens}.0",
            ]
            return ("\n".join(lines) + "\n").encode()


def _serve(fake: FakeVllm) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = fake.render()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Scraped:
    prom: PromServer
    buckets: list[SeriesData]
    counter: SeriesData


def _series(item: dict[str, Any]) -> SeriesData:
    metric = dict(item["metric"])
    name = metric.pop("__name__")
    pts = item["values"]
    return SeriesData(
        name,
        make_labels(metric),
        np.array([float(t) for t, _ in pts]),
        np.array([float(v) for _, v in pts]),
    )


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    if prometheus_binary() is None:
        pytest.skip("prometheus binary not found (Debian package 'prometheus'); CI installs it")
    fake = _serve(fake_state := FakeVllm())
    workdir: Path = tmp_path_factory.mktemp("prom")
    target = f"127.0.0.1:{fake.server_address[1]}"
    try:
        with PromServer(workdir, scrape_configs=[static_job("vllm", target)]) as prom:
            deadline = time.monotonic() + 45
            while fake_state.scrapes < SCRAPES + 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert fake_state.scrapes > SCRAPES, f"only {fake_state.scrapes} scrapes in 45 s"
            # one query, so buckets and counter end at the same scrape (a scrape's
            # samples are committed together)
            raw = [_series(x) for x in prom.query(f'{{__name__=~"{HIST}_bucket|{COUNTER}"}}[5m]')]
            buckets = [x for x in raw if x.signal == f"{HIST}_bucket"]
            counters = [x for x in raw if x.signal == COUNTER]
            assert len(buckets) == len(EDGES) and len(counters) == 1, raw
            assert all(np.array_equal(b.timestamps, counters[0].timestamps) for b in buckets)
            yield Scraped(prom, buckets, counters[0])
    finally:
        fake.shutdown()
        fake.server_close()


def _eval_times_ms(ts: np.ndarray) -> list[int]:
    """On each scrape timestamp, 1 ms either side, and half-way to the next one."""
    t = [round(float(x) * 1000) for x in ts]
    out: set[int] = set()
    for a, b in itertools.pairwise(t):
        out |= {a, a + 1, b - 1, (a + b) // 2}
    out.add(t[-1])
    return sorted(x for x in out if t[0] < x <= t[-1])  # never past what we fetched


def _prom_value(result: list[dict[str, Any]]) -> float | None:
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def _same(ours: float | None, theirs: float | None) -> float:
    """Relative error; raise if one side is None/NaN and the other not."""
    assert (ours is None) == (theirs is None), (ours, theirs)
    if ours is None or theirs is None:
        return 0.0
    assert math.isnan(ours) == math.isnan(theirs), (ours, theirs)
    if math.isnan(ours) or ours == theirs:
        return 0.0
    err = abs(ours - theirs) / max(abs(theirs), 1e-300)
    assert math.isclose(ours, theirs, rel_tol=1e-6, abs_tol=1e-12), (ours, theirs)
    return err


def _at(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def test_increase_and_rate_match_prometheus(scraped: Scraped) -> None:
    c = scraped.counter
    drops = np.flatnonzero(np.diff(c.values) < 0)
    assert len(drops) == 1, "the fake server restarts exactly once"
    compared, worst, across_reset, none_seen = 0, 0.0, 0, 0
    for ms in _eval_times_ms(c.timestamps):
        end = ms / 1000
        for fn, ours in (("increase", increase), ("rate", rate)):
            theirs = _prom_value(scraped.prom.query(f"{fn}({COUNTER}[{WINDOW_S}s])", _at(ms)))
            mine = ours(c.timestamps, c.values, end - WINDOW_S, end)
            try:
                worst = max(worst, _same(mine, theirs))
            except AssertionError as exc:
                raise AssertionError(f"{fn} at {_at(ms)}: ours {mine} prom {theirs}") from exc
            compared += 1
            none_seen += mine is None
        reset_t = c.timestamps[drops[0] + 1]
        across_reset += end - WINDOW_S < reset_t <= end
    print(
        f"\nincrease/rate: {compared} evaluations, max rel err {worst:.3g}, "
        f"{across_reset} windows span the restart, {none_seen} without output"
    )
    assert compared >= 100 and across_reset >= 10


def test_histogram_quantile_matches_prometheus(scraped: Scraped) -> None:
    compared, worst = 0, 0.0
    nan_seen = inf_bucket = finite = 0
    for ms in _eval_times_ms(scraped.counter.timestamps):
        end = ms / 1000
        for q in QUANTILES:
            expr = f"histogram_quantile({q}, increase({HIST}_bucket[{WINDOW_S}s]))"
            theirs = _prom_value(scraped.prom.query(expr, _at(ms)))
            mine = window_quantile(q, scraped.buckets, end - WINDOW_S, end)
            try:
                worst = max(worst, _same(mine, theirs))
            except AssertionError as exc:
                raise AssertionError(f"q={q} at {_at(ms)}: ours {mine} prom {theirs}") from exc
            compared += 1
            if mine is not None and math.isnan(mine):
                nan_seen += 1
            elif mine == 80.0:
                inf_bucket += 1
            elif mine is not None:
                finite += 1
    print(
        f"\nhistogram_quantile: {compared} evaluations, max rel err {worst:.3g}, {nan_seen} NaN"
        f" (no traffic), {inf_bucket} in +Inf bucket, {finite} interpolated"
    )
    # the scenario must actually have exercised the interesting paths
    assert compared >= 150 and nan_seen >= 3 and inf_bucket >= 3 and finite >= 50
