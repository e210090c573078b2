"""ServerCollector against real HTTP on loopback: every failure is ``server_up 0``.

Each test runs a ``ThreadingHTTPServer`` on 127.0.0.1 port 0 whose handler behaviour
the test chooses (serve, sleep, 500, HTML, short body, endless body), so the
collector's socket handling, not a mock of it, is what is tested.
"""

from __future__ import annotations

import gzip
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from gpuwarden.collector.curl_fetch import MultiFetch
from gpuwarden.collector.promtext import parse
from gpuwarden.collector.scrape import ServerCollector, redact_url
from gpuwarden.collector.session import SCRAPE_USER_AGENT, scrape_session
from gpuwarden.errors import ConfigError
from gpuwarden.model import Sample

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "metrics"
KV_PRESSURE = (FIXTURES / "vllm-0.32-cpu-kv-pressure.prom").read_bytes()

Behaviour = Callable[[BaseHTTPRequestHandler], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        server.requests += 1
        server.behaviour(self)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour
    requests = 0
    connections = 0  # accepted
    open_connections = 0  # accepted and not yet closed by either end
    stop: threading.Event

    def process_request_thread(self, request: socket.socket,  # type: ignore[override]
                               client_address: tuple[str, int]) -> None:
        self.connections += 1
        self.open_connections += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.open_connections -= 1

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up mid-response is what several tests do on purpose


@pytest.fixture
def http() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.stop = threading.Event()
    server.behaviour = serve(KV_PRESSURE)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.stop.set()  # wake handlers that sleep
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(params=["requests", "direct"])
def session(request: pytest.FixtureRequest) -> Iterator[requests.Session]:
    """A plain requests session, and the daemon's (``scrape_session``), which the
    collector fetches with libcurl (``collector/curl_fetch.py``): every
    test runs with both, so both paths fail and succeed the same way."""
    with (requests.Session() if request.param == "requests" else scrape_session()) as s:
        yield s


def url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/metrics"


def make(session: requests.Session | Callable[[], requests.Session], target: str, *,
         timeout: float = 2.0,
         max_bytes: int = 16 * 1024 * 1024) -> ServerCollector:
    return ServerCollector("node-a", "vllm-0", "vllm", target, session, timeout, max_bytes)


def serve(body: bytes, status: int = 200, ctype: str = "text/plain; version=0.0.4",
          headers: dict[str, str] | None = None) -> Behaviour:
    def run(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
    return run


def up(samples: list[Sample]) -> float:
    (s,) = [s for s in samples if s.signal == "server_up"]
    assert dict(s.labels) == {"node": "node-a", "server": "vllm-0", "kind": "vllm"}
    return s.value


def assert_down(samples: list[Sample], c: ServerCollector, reason: str) -> None:
    assert [s.signal for s in samples] == ["server_up"]
    assert up(samples) == 0.0
    assert c.scrape_errors_total == {reason: 1}, c.last_error
    assert c.last_error is not None and c.last_error.startswith(reason)


# ----------------------------------------------------------------------- success


def test_success_maps_the_payload_and_reports_up(http: _Server,
                                                 session: requests.Session) -> None:
    c = make(session, url(http))
    assert c.name == "server:vllm-0"
    out = c.collect()
    assert up(out) == 1.0
    kv = [s for s in out if s.signal == "kv_cache_usage_ratio"]
    assert [s.value for s in kv] == [0.873015873015873]
    assert c.models == ("tiny-llama",)
    assert c.scrape_errors_total == {} and c.parse_errors_total == 0 and c.last_error is None


def test_gzip_encoded_payload_is_decoded(http: _Server, session: requests.Session) -> None:
    http.behaviour = serve(gzip.compress(KV_PRESSURE), headers={"Content-Encoding": "gzip"})
    c = make(session, url(http))
    out = c.collect()
    assert up(out) == 1.0
    assert any(s.signal == "ttft_seconds_bucket" for s in out)


def test_invalid_lines_in_a_usable_payload_are_counted(http: _Server,
                                                       session: requests.Session) -> None:
    http.behaviour = serve(KV_PRESSURE + b"this is not a sample\n{broken 1\n")
    c = make(session, url(http))
    out = c.collect()
    assert up(out) == 1.0
    assert c.parse_errors_total == len(parse(KV_PRESSURE).errors) + 2
    assert c.scrape_errors_total == {}


def test_a_slow_to_parse_payload_keeps_its_first_lines(http: _Server,
                                                       session: requests.Session) -> None:
    """Parse budget spent: the lines parsed so far are used and the cut is counted."""
    head = b'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
    filler = b"".join(b'untyped_filler{i="%d"} 1\n' % i for i in range(20_000))  # ~500 KB
    http.behaviour = serve(head + filler)
    c = make(session, url(http))
    c.parse_budget_s = 0.0  # spent after the first 64 KiB chunk
    out = c.collect()
    assert up(out) == 1.0  # the server answered
    running = [s for s in out if s.signal == "requests_running"]
    assert [s.value for s in running] == [3.0]
    assert c.scrape_errors_total == {"parse_timeout": 1}
    assert c.parse_errors_total == 0 and c.last_error is None


def test_bad_lines_cost_only_themselves_and_are_all_counted(
        http: _Server, session: requests.Session) -> None:
    """Hundreds of junk lines, one of them 1 MB long, among valid ones: all counted."""
    clean = {(s.signal, s.value) for s in make(session, url(http)).collect()}
    junk = b"".join(b"junk %d\x01\n" % i for i in range(300)) + b"y" * (1 << 20) + b"\n"
    http.behaviour = serve(junk + KV_PRESSURE + junk)
    c = make(session, url(http))
    assert {(s.signal, s.value) for s in c.collect()} == clean  # server_up 1 included
    assert c.parse_errors_total == 2 * 301
    assert c.scrape_errors_total == {}


def test_empty_payload_is_up_with_no_signals(http: _Server, session: requests.Session) -> None:
    http.behaviour = serve(b"")
    out = make(session, url(http)).collect()
    assert [s.signal for s in out] == ["server_up"] and up(out) == 1.0


def test_models_survive_a_failed_scrape(http: _Server, session: requests.Session) -> None:
    c = make(session, url(http))
    c.collect()
    http.behaviour = serve(b"oops", status=503)
    assert up(c.collect()) == 0.0
    assert c.models == ("tiny-llama",)


# ----------------------------------------------------------------------- failures


def test_connection_refused(session: requests.Session) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = make(session, f"http://127.0.0.1:{port}/metrics")
    assert_down(c.collect(), c, "refused")


def test_timeout_waiting_for_headers(http: _Server, session: requests.Session) -> None:
    def hang(h: BaseHTTPRequestHandler) -> None:
        http.stop.wait(2.0)

    http.behaviour = hang
    c = make(session, url(http), timeout=0.3)
    t0 = time.monotonic()
    out = c.collect()
    assert time.monotonic() - t0 < 1.5
    assert_down(out, c, "timeout")


def test_timeout_on_a_body_that_dribbles(http: _Server, session: requests.Session) -> None:
    # Each byte arrives well within the read timeout; the body deadline still applies.
    def dribble(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        for _ in range(1000):
            h.wfile.write(b"#")
            h.wfile.flush()
            if http.stop.wait(0.05):
                return

    http.behaviour = dribble
    c = make(session, url(http), timeout=0.3)
    t0 = time.monotonic()
    out = c.collect()
    assert time.monotonic() - t0 < 1.5
    assert_down(out, c, "timeout")


def test_http_500(http: _Server, session: requests.Session) -> None:
    http.behaviour = serve(b"Internal Server Error", status=500)
    c = make(session, url(http))
    assert_down(c.collect(), c, "http_status")
    assert "500" in (c.last_error or "")


def test_html_garbage(http: _Server, session: requests.Session) -> None:
    html = b"<!DOCTYPE html>\n<html><head><title>Login</title></head>\n<body>nope</body></html>\n"
    http.behaviour = serve(html, ctype="text/html")
    c = make(session, url(http))
    assert_down(c.collect(), c, "parse")
    assert c.parse_errors_total == 0  # not an otherwise-usable payload


def test_binary_garbage(http: _Server, session: requests.Session) -> None:
    http.behaviour = serve(bytes(range(256)) * 4, ctype="application/octet-stream")
    c = make(session, url(http))
    assert_down(c.collect(), c, "parse")


def test_truncated_body_shorter_than_content_length(http: _Server,
                                                    session: requests.Session) -> None:
    def short(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(KV_PRESSURE)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(KV_PRESSURE[: len(KV_PRESSURE) // 2])
        h.wfile.flush()
        h.close_connection = True

    http.behaviour = short
    c = make(session, url(http))
    assert_down(c.collect(), c, "truncated")


def test_truncated_chunked_body(http: _Server, session: requests.Session) -> None:
    def chunked(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Connection", "close")
        h.end_headers()
        part = KV_PRESSURE[:4000]
        h.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        h.wfile.write(b"1000\r\nonly a few bytes of a 4096-byte chunk")
        h.wfile.flush()
        h.close_connection = True

    http.behaviour = chunked
    c = make(session, url(http))
    assert_down(c.collect(), c, "truncated")


def test_oversized_by_content_length(http: _Server, session: requests.Session) -> None:
    c = make(session, url(http), max_bytes=4096)
    assert_down(c.collect(), c, "oversize")


def test_oversized_without_content_length(http: _Server, session: requests.Session) -> None:
    # An endless chunked body: reading must stop at max_bytes, not at the end.
    def endless(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        line = b'vllm:num_requests_running{engine="0",model_name="m"} 1.0\n' * 100
        try:
            while not http.stop.is_set():
                h.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        except OSError:
            pass  # the collector hung up, as it should

    http.behaviour = endless
    c = make(session, url(http), max_bytes=64 * 1024, timeout=2.0)
    t0 = time.monotonic()
    out = c.collect()
    assert time.monotonic() - t0 < 1.5
    assert_down(out, c, "oversize")


def test_body_of_exactly_max_bytes_is_used_one_more_is_oversize(
        http: _Server, session: requests.Session) -> None:
    """The cap is exact, also for a body without Content-Length in many small pieces."""
    limit = 64 * 1024
    body = KV_PRESSURE[:limit]
    body = body[: body.rfind(b"\n") + 1]
    body += b"#" * (limit - len(body) - 1) + b"\n"  # a comment pads it to exactly limit
    assert len(body) == limit

    def trickle(payload: bytes) -> Behaviour:
        def run(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for i in range(0, len(payload), 1000):
                piece = payload[i:i + 1000]
                h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            h.wfile.write(b"0\r\n\r\n")
        return run

    c = make(session, url(http), max_bytes=limit)
    http.behaviour = trickle(body)
    assert up(c.collect()) == 1.0
    http.behaviour = trickle(body + b"\n")
    assert up(c.collect()) == 0.0
    http.behaviour = serve(gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert up(c.collect()) == 1.0
    http.behaviour = serve(gzip.compress(body + b"\n"), headers={"Content-Encoding": "gzip"})
    assert up(c.collect()) == 0.0
    assert c.scrape_errors_total == {"oversize": 2}


def test_default_cap_is_8_mib(session: requests.Session) -> None:
    c = ServerCollector("node-a", "vllm-0", "vllm", "http://127.0.0.1:9/metrics", session)
    assert c.max_bytes == 8 * 1024 * 1024


def test_oversized_gzip_bomb_is_cut_after_decoding(http: _Server,
                                                   session: requests.Session) -> None:
    bomb = gzip.compress(b"# padding\n" * 200_000)  # 2 MB decoded, ~10 kB on the wire
    http.behaviour = serve(bomb, headers={"Content-Encoding": "gzip"})
    c = make(session, url(http), max_bytes=256 * 1024)
    assert_down(c.collect(), c, "oversize")


# ------------------------------------------------------------------ bookkeeping


def test_counters_by_reason_and_recovery(http: _Server, session: requests.Session) -> None:
    c = make(session, url(http))
    http.behaviour = serve(b"x", status=502)
    c.collect()
    c.collect()
    http.behaviour = serve(b"<html>", ctype="text/html")
    c.collect()
    assert c.scrape_errors_total == {"http_status": 2, "parse": 1}
    http.behaviour = serve(KV_PRESSURE)
    assert up(c.collect()) == 1.0
    assert c.last_error is None
    assert c.scrape_errors_total == {"http_status": 2, "parse": 1}


def test_repeated_failures_log_one_warning_per_interval(
    http: _Server, session: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    http.behaviour = serve(b"x", status=500)
    c = make(session, url(http))
    with caplog.at_level(logging.WARNING, logger="gpuwarden.collector.scrape"):
        for _ in range(5):
            c.collect()
        assert len(caplog.records) == 1
        assert "vllm-0" in caplog.records[0].getMessage()
        c.warn_every_s = 0.0
        c.collect()
    assert len(caplog.records) == 2
    assert "4 similar suppressed" in caplog.records[1].getMessage()
    assert c.scrape_errors_total == {"http_status": 6}


def test_concurrent_collects_count_exactly(http: _Server, session: requests.Session) -> None:
    http.behaviour = serve(b"nope", status=500)
    c = make(session, url(http))
    threads = [threading.Thread(target=lambda: [c.collect() for _ in range(5)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert c.scrape_errors_total == {"http_status": 20}


def test_unknown_kind_is_a_config_error(session: requests.Session) -> None:
    with pytest.raises(ConfigError, match="unknown kind"):
        ServerCollector("n", "s", "ollama", "http://127.0.0.1:1/metrics", session)


def test_credentials_never_reach_the_log() -> None:
    assert redact_url("http://user:secret@host:8000/metrics") == "http://host:8000/metrics"
    assert redact_url("http://host:8000/metrics") == "http://host:8000/metrics"


def test_sends_accept_for_the_text_format(http: _Server, session: requests.Session) -> None:
    seen: dict[str, str] = {}

    def record(h: BaseHTTPRequestHandler) -> None:
        seen["accept"] = h.headers.get("Accept", "")
        serve(KV_PRESSURE)(h)

    http.behaviour = record
    make(session, url(http)).collect()
    assert seen["accept"].startswith("text/plain;version=0.0.4")


def test_404_from_sglang_says_how_to_switch_metrics_on(
    http: _Server, session: requests.Session
) -> None:
    http.behaviour = serve(b'{"detail":"Not Found"}', status=404, ctype="application/json")
    c = ServerCollector("node-a", "sg", "sglang", url(http), session)
    out = c.collect()
    assert [s.value for s in out if s.signal == "server_up"] == [0.0]
    assert "--enable-metrics" in (c.last_error or "")


def test_a_server_of_another_kind_is_up_and_says_so(
    http: _Server, session: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    """A vLLM scrape configured as TGI: nothing maps (its families go unparsed), yet the
    server answered, so it is up, and the operator is told the kind looks wrong."""
    http.behaviour = serve(KV_PRESSURE)
    c = ServerCollector("node-a", "wrong", "tgi", url(http), session)
    with caplog.at_level(logging.WARNING, logger="gpuwarden.collector.scrape"):
        out = c.collect()
    assert [(s.signal, s.value) for s in out] == [("server_up", 1.0)]
    assert "no tgi metric gpuwarden knows" in caplog.text


def test_the_daemons_session_fetches_without_requests(http: _Server,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``scrape_session`` (no proxy from the environment) a plain http target is
    fetched with libcurl, not requests, and sends what requests would send."""
    seen: dict[str, str] = {}

    def run(h: BaseHTTPRequestHandler) -> None:
        seen.update({k.lower(): v for k, v in h.headers.items()})
        serve(KV_PRESSURE)(h)

    http.behaviour = run
    with scrape_session() as s:
        c = make(s, url(http))

        def no_requests(*args: object, **kwargs: object) -> None:
            raise AssertionError("went through requests")

        monkeypatch.setattr(s, "get", no_requests)
        for _ in range(3):
            assert up(c.collect()) == 1.0
        assert seen["user-agent"] == s.headers["User-Agent"]
        assert seen["accept"].startswith("text/plain;version=0.0.4")
        assert "gzip" in seen["accept-encoding"]
        assert http.requests == 3


def redirect_to_real_metrics(h: BaseHTTPRequestHandler) -> None:
    """``/metrics`` answers 302 to ``/real-metrics``, which serves the payload."""
    if h.path == "/metrics":
        h.send_response(302)
        h.send_header("Location", "/real-metrics")
        h.send_header("Content-Length", "0")
        h.end_headers()
    else:
        serve(KV_PRESSURE)(h)


def test_a_redirect_is_followed_by_requests(http: _Server, session: requests.Session) -> None:
    http.behaviour = redirect_to_real_metrics
    c = make(session, url(http))
    for _ in range(2):
        out = c.collect()
        assert up(out) == 1.0, c.last_error
        assert any(s.signal == "kv_cache_usage_ratio" for s in out)


def test_a_session_maker_is_called_only_when_requests_must_fetch(http: _Server) -> None:
    """The daemon hands its collectors what makes the scrape session: plain-http targets
    (fetched with libcurl) never call it, so ``requests`` is not imported for them; the
    first scrape that needs requests (here a redirect) makes it."""
    made: list[requests.Session] = []
    seen: dict[str, str] = {}

    def maker() -> requests.Session:
        made.append(scrape_session())
        return made[-1]

    def run(h: BaseHTTPRequestHandler) -> None:
        seen.update({k.lower(): v for k, v in h.headers.items()})
        serve(KV_PRESSURE)(h)

    http.behaviour = run
    c = make(maker, url(http))
    for _ in range(3):
        assert up(c.collect()) == 1.0
    assert made == []
    assert seen["user-agent"] == SCRAPE_USER_AGENT

    http.behaviour = redirect_to_real_metrics
    try:
        assert up(c.collect()) == 1.0, c.last_error
        assert len(made) == 1 and c.session is made[0]
    finally:
        c.close()
        for s in made:
            s.close()


def test_one_connection_is_kept_across_scrapes_until_closed(http: _Server) -> None:
    """With the daemon's session the collector's libcurl transfer keeps its connection
    from one scrape to the next, alone (``collect``) or driven with others by a
    ``MultiFetch`` (the collector runner's way), and closes it when closed: no new
    connection per scrape, no socket left in TIME-WAIT per scrape."""
    with scrape_session() as s:
        c = make(s, url(http))
        for _ in range(3):
            assert up(c.collect()) == 1.0, c.last_error
        multi = MultiFetch()
        try:
            for _ in range(3):
                fetch = c.begin_fetch()
                assert fetch is not None
                done: list[object] = []
                multi.add(fetch)
                multi.drive(time.monotonic() + 5, done.append)
                assert done == [fetch]
                assert up(c.finish_fetch(fetch, *multi.result_of(fetch))) == 1.0, c.last_error
        finally:
            multi.close()
        assert http.requests == 6
        # One connection for the lone scrapes, one in the runner's connection cache.
        assert http.connections == 2
        c.close()
        deadline = time.monotonic() + 5
        while http.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert http.open_connections == 0


def test_a_transfer_in_use_is_not_handed_out_twice(http: _Server) -> None:
    with scrape_session() as s:
        c = make(s, url(http))
        fetch = c.begin_fetch()
        assert fetch is not None
        assert c.begin_fetch() is None  # reserved until finish_fetch
        assert up(c.collect()) == 1.0, c.last_error  # a collect meanwhile uses another
        multi = MultiFetch()
        try:
            multi.add(fetch)
            multi.drive(time.monotonic() + 5, lambda _f: None)
            assert up(c.finish_fetch(fetch, *multi.result_of(fetch))) == 1.0
        finally:
            multi.close()
        assert c.begin_fetch() is fetch
