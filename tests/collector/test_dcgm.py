"""DcgmCollector on dcgm-exporter payloads served over real HTTP on loopback.

The recorded payloads are README / golden-test excerpts (the origin line of each file
says which); ``dcgm-exporter_constructed-2xh100-mig.prom`` is built from the exporter's
text template to cover a full GPU, a MIG instance and sentinels together.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from gpuwarden.collector.dcgm import DcgmCollector, is_sentinel
from gpuwarden.errors import ScrapeError
from gpuwarden.model import Sample
from gpuwarden.signals import SIGNALS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "metrics"
MIB = 1048576
H100 = "NVIDIA H100 80GB HBM3"
README_UUID = "GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        srv = self.server
        srv.requests += 1
        if srv.delay:
            time.sleep(srv.delay)
        self.send_response(srv.status)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(srv.payload)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(srv.payload)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    payload: bytes = b""
    status: int = 200
    delay: float = 0.0
    requests: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/metrics"


@pytest.fixture
def exporter() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def payload(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def scrape(exporter: _Server, session: requests.Session, body: bytes,
           **kwargs: Any) -> list[Sample]:
    exporter.payload = body
    return list(DcgmCollector("node-a", exporter.url, session, **kwargs).collect())


def by(samples: Iterable[Sample], signal: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples:
        if s.signal == signal:
            labels = dict(s.labels)
            out[labels["gpu"] + (f":{labels['type']}" if "type" in labels else "")] = s.value
    return out


def labels_of(samples: Iterable[Sample], gpu: str) -> dict[str, str]:
    return next(dict(s.labels) for s in samples if dict(s.labels)["gpu"] == gpu)


def test_fixtures_keep_their_origin_line() -> None:
    for path in FIXTURES.glob("dcgm-exporter_*.prom"):
        assert path.read_text().startswith("# source: "), path.name


def test_readme_quickstart_payload(exporter: _Server, session: requests.Session) -> None:
    samples = scrape(exporter, session, payload("dcgm-exporter_README-quickstart.prom"))
    assert by(samples, "gpu_up") == {"0": 1.0}
    assert by(samples, "gpu_sm_clock_hertz") == {"0": 139e6}
    assert by(samples, "gpu_memory_clock_hertz") == {"0": 405e6}
    assert labels_of(samples, "0") == {"node": "node-a", "gpu": "0", "uuid": README_UUID,
                                       "model": ""}
    assert all(s.signal in SIGNALS for s in samples)


def test_readme_kubernetes_payload_ignores_pod_labels(exporter: _Server,
                                                      session: requests.Session) -> None:
    samples = scrape(exporter, session, payload("dcgm-exporter_README-kubernetes.prom"))
    assert by(samples, "gpu_sm_clock_hertz") == {"0": 139e6}
    assert set(labels_of(samples, "0")) == {"node", "gpu", "uuid", "model"}


def test_golden_render_reads_only_gpu_entities(exporter: _Server,
                                               session: requests.Session) -> None:
    """The exporter's golden strings, one per entity kind, with TEST_METRIC renamed to a
    mapped field: only the GPU entity may come out (NvSwitch, NvLink, CPU are ignored)."""
    body = payload("dcgm-exporter_render-test-golden.prom").replace(
        b"TEST_METRIC", b"DCGM_FI_DEV_GPU_TEMP").replace(b"test-uuid=", b"UUID=")
    samples = scrape(exporter, session, body)
    assert by(samples, "gpu_temperature_celsius") == {"0": 42.0}
    assert by(samples, "gpu_up") == {"0": 1.0}
    # The golden's configurable uuid label ('test-uuid', not a valid Prometheus label name)
    # is set to its default spelling 'UUID'; lowercase 'hostname' is not a label of ours.
    assert labels_of(samples, "0") == {"node": "node-a", "gpu": "0", "model": "Test GPU Model",
                                       "uuid": "GPU-test-uuid-0000-0000-0000-000000000000"}


def test_constructed_full_payload(exporter: _Server, session: requests.Session) -> None:
    samples = scrape(exporter, session, payload("dcgm-exporter_constructed-2xh100-mig.prom"))
    assert by(samples, "gpu_up") == {"0": 1.0, "1": 1.0}  # no gpu_up for the MIG instance
    zero = labels_of(samples, "0")
    assert zero == {"node": "node-a", "gpu": "0", "model": H100,
                    "uuid": "GPU-5f7c1a9e-3b2d-4e8f-9a61-0c2e7d4b8a13"}
    assert by(samples, "gpu_utilization_ratio") == pytest.approx({"0": 0.87, "1": 0.412})
    assert by(samples, "gpu_memory_used_bytes") == {"0": 73210 * MIB, "1": 20968 * MIB,
                                                    "1/1": 18432 * MIB}
    assert by(samples, "gpu_memory_total_bytes") == {"0": 81559 * MIB, "1": 81559 * MIB,
                                                     "1/1": 40192 * MIB}
    assert by(samples, "gpu_temperature_celsius") == {"0": 61.0}  # GPU 1: sentinel -> absent
    assert by(samples, "gpu_power_watts") == pytest.approx({"0": 612.345, "1": 298.12})
    assert by(samples, "gpu_sm_clock_hertz") == {"0": 1980e6, "1": 1755e6}
    assert by(samples, "gpu_throttle_reasons") == {"0": 0.0, "1": 4.0}
    assert by(samples, "gpu_ecc_errors_total") == {"0:corrected": 2.0, "0:uncorrected": 0.0,
                                                   "1:corrected": 0.0, "1:uncorrected": 0.0}
    assert by(samples, "gpu_xid_errors_total") == {"0": 0.0, "1": 0.0}
    mig = labels_of(samples, "1/1")
    assert set(mig) == {"node", "gpu", "uuid", "model"}
    assert all(s.signal in SIGNALS for s in samples)


def test_headroom_is_free_over_used_free_and_reserved(exporter: _Server,
                                                      session: requests.Session) -> None:
    samples = scrape(exporter, session, payload("dcgm-exporter_constructed-2xh100-mig.prom"))
    # GPU 0: 7813 MiB free of 73210 used + 7813 free + 536 reserved = 81559 MiB.
    assert by(samples, "gpu_memory_headroom_ratio") == {
        "0": 7813 / 81559, "1": 60055 / 81559, "1/1": 21111 / (18432 + 21111 + 649)}
    # dcgm-exporter has no bus width: no static capacity figures, no peak bandwidth.
    for signal in ("gpu_memory_bus_width_bits", "gpu_memory_clock_max_hertz",
                   "gpu_memory_bandwidth_peak_bytes_per_second"):
        assert by(samples, signal) == {}, signal


def test_headroom_needs_free_memory_and_takes_fb_total_where_published(
    exporter: _Server, session: requests.Session,
) -> None:
    body = payload("dcgm-exporter_constructed-2xh100-mig.prom")
    no_free = b"".join(line for line in body.splitlines(keepends=True)
                       if not line.startswith(b"DCGM_FI_DEV_FB_FREE{"))
    samples = scrape(exporter, session, no_free)
    assert by(samples, "gpu_memory_headroom_ratio") == {}
    assert by(samples, "gpu_memory_used_bytes")["0"] == 73210 * MIB  # the rest still maps
    gpu0 = next(line for line in body.splitlines()
                if line.startswith(b'DCGM_FI_DEV_FB_USED{gpu="0"'))
    labels = gpu0[gpu0.index(b"{"):gpu0.rindex(b"}") + 1]  # the same GPU entity
    extra = (b"DCGM_FI_DEV_FB_TOTAL" + labels + b" 81920\n"
             b"DCGM_FI_DEV_MAX_MEM_CLOCK" + labels + b" 2619\n")
    samples = scrape(exporter, session, body + extra)
    assert by(samples, "gpu_memory_headroom_ratio")["0"] == 7813 / 81920
    assert by(samples, "gpu_memory_clock_max_hertz") == {"0": 2619e6}  # custom counter set
    assert by(samples, "gpu_memory_bandwidth_peak_bytes_per_second") == {}


def test_label_names_match_case_insensitively(exporter: _Server,
                                              session: requests.Session) -> None:
    """dcgm-exporter main renamed Hostname -> hostname; --use-old-namespace spells uuid."""
    body = payload("dcgm-exporter_constructed-2xh100-mig.prom")
    renamed = body.replace(b"Hostname=", b"hostname=").replace(b"UUID=", b"uuid=").replace(
        b"modelName=", b"modelname=")
    def series(samples: list[Sample]) -> list[tuple[str, Any, float]]:
        return sorted((s.signal, s.labels, s.value) for s in samples)

    assert series(scrape(exporter, session, renamed)) == series(scrape(exporter, session, body))


def test_xid_last_value_becomes_a_counter(exporter: _Server, session: requests.Session) -> None:
    body = payload("dcgm-exporter_constructed-2xh100-mig.prom")
    collector = DcgmCollector("node-a", exporter.url, session)
    totals = []
    for xid0 in (b"0", b"79", b"79", b"31"):
        exporter.payload = _set_xid(body, xid0)
        totals.append(by(collector.collect(), "gpu_xid_errors_total"))
    assert [t["0"] for t in totals] == [0.0, 1.0, 1.0, 2.0]
    assert all(t["1"] == 0.0 for t in totals)


def _set_xid(body: bytes, value: bytes) -> bytes:
    out = []
    for line in body.splitlines(keepends=True):
        if line.startswith(b'DCGM_FI_DEV_XID_ERRORS{gpu="0"'):
            out.append(line.rsplit(b" ", 1)[0] + b" " + value + b"\n")
        else:
            out.append(line)
    return b"".join(out)


@pytest.mark.parametrize("value,absent", [
    (9223372036854775794.0, True), (9223372036854775792.0, True), (140737488355330.0, True),
    (2147483634.0, True), (float("nan"), True), (0.0, False), (700.0, False),
    (81559.0, False),
])
def test_sentinels(value: float, absent: bool) -> None:
    assert is_sentinel(value) is absent


def test_refused_connection_raises_scrape_error(session: requests.Session) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    collector = DcgmCollector("node-a", f"http://127.0.0.1:{port}/metrics", session)
    with pytest.raises(ScrapeError):
        collector.collect()
    assert collector.scrape_errors_total == {"connection": 1}
    assert collector.last_error is not None


def test_http_error_raises_scrape_error(exporter: _Server, session: requests.Session) -> None:
    exporter.status = 503
    with pytest.raises(ScrapeError, match="HTTP 503"):
        scrape(exporter, session, b"unavailable\n")


@pytest.mark.parametrize("body", [
    b"\x00\xff\xfe garbage \x89PNG\r\n\x1a\n" * 50,
    b"<html><body><h1>Welcome to nginx!</h1></body></html>\n",
])
def test_garbage_raises_scrape_error(exporter: _Server, session: requests.Session,
                                     body: bytes) -> None:
    collector = DcgmCollector("node-a", exporter.url, session)
    exporter.payload = body
    with pytest.raises(ScrapeError):
        collector.collect()
    assert collector.scrape_errors_total == {"parse": 1}


def test_slow_exporter_times_out(exporter: _Server, session: requests.Session) -> None:
    exporter.delay = 1.0
    collector = DcgmCollector("node-a", exporter.url, session, timeout=0.2)
    start = time.monotonic()
    with pytest.raises(ScrapeError):
        collector.collect()
    assert time.monotonic() - start < 0.9
    assert collector.scrape_errors_total == {"timeout": 1}


def test_oversize_body_is_refused(exporter: _Server, session: requests.Session) -> None:
    exporter.payload = payload("dcgm-exporter_constructed-2xh100-mig.prom")
    collector = DcgmCollector("node-a", exporter.url, session, max_bytes=1024)
    with pytest.raises(ScrapeError):
        collector.collect()
    assert collector.scrape_errors_total == {"oversize": 1}


def test_every_request_has_an_explicit_timeout(exporter: _Server) -> None:
    seen: list[Any] = []

    class Recording(requests.Session):
        def request(self, method: str | bytes, url: str | bytes,
                    *args: Any, **kwargs: Any) -> requests.Response:
            seen.append(kwargs.get("timeout"))
            return super().request(method, url, *args, **kwargs)

    exporter.payload = payload("dcgm-exporter_README-quickstart.prom")
    with Recording() as s:
        DcgmCollector("node-a", exporter.url, s, timeout=1.5).collect()
    assert seen == [1.5]


def test_a_bad_line_costs_that_line_and_is_counted(exporter: _Server,
                                                   session: requests.Session) -> None:
    good = payload("dcgm-exporter_README-quickstart.prom")  # 2 bad lines of its own (curl)
    # A name, a long run of blanks and no value: the line the parser once took seconds on.
    bad = b"DCGM_FI_DEV_SM_CLOCK" + b"\t" * 20_000 + b"{\n"
    name = b"\nDCGM_FI_DEV_SM_CLOCK"
    exporter.payload = good.replace(name, b"\n" + bad + name[1:], 1)
    collector = DcgmCollector("node-a", exporter.url, session)
    samples = list(collector.collect())
    assert by(samples, "gpu_up") == {"0": 1.0}
    assert by(samples, "gpu_sm_clock_hertz") == {"0": 139e6}  # the valid line after it
    assert collector.parse_errors_total == 3
    assert collector.scrape_errors_total == {}
