"""The scrape path's memo (``promtext_memo``) and compiled mapping (``servers/compiled``)
give exactly what a full parse and ``map_exposition`` give.

Every recorded payload is checked under every server kind's table, then sequences of
scrapes where values change (NaN, infinities, -0.0, values the parser rejects), series
appear and disappear, comments change and timestamps come and go; the reference is
always computed from scratch by ``promtext.parse`` + ``map_exposition`` on the same
bytes, and the memo is checked to have been used, so that a comparison cannot pass
only because the memo was bypassed.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpuwarden.collector import promtext_memo
from gpuwarden.collector.promtext import Exposition, parse
from gpuwarden.collector.promtext_memo import MAX_BACKOFF, ParseMemo, Template
from gpuwarden.collector.registry import SERVER_KINDS
from gpuwarden.collector.scrape import ServerCollector
from gpuwarden.collector.servers.base import map_exposition
from gpuwarden.collector.servers.compiled import MappingPlan, compile_mapping, same_samples
from gpuwarden.collector.session import scrape_session
from gpuwarden.errors import ExpositionParseError
from gpuwarden.model import Sample

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "metrics"
PAYLOADS = sorted(FIXTURES.glob("*.prom"))
KINDS = sorted(SERVER_KINDS)
VLLM = (FIXTURES / "vllm-0.32-cpu-after-load.prom").read_text()
MAX = 16 * 1024 * 1024
NODE, SERVER = "node-a", "srv-0"
# A sample line in the plain spelling: what is before the value, the value.
_SAMPLE = re.compile(r"^([a-zA-Z_:][^ \n]*(?:\{[^\n]*\})?) (\S+)$", re.M)


def same_exposition(a: Exposition, b: Exposition) -> bool:
    """Equal, sample values compared bit for bit."""
    if (list(a.samples) != list(b.samples) or a.types != b.types or a.helps != b.helps
            or a.skipped_lines != b.skipped_lines or a.invalid_lines != b.invalid_lines
            or a.errors != b.errors or a.truncated != b.truncated):
        return False
    for name, got in a.samples.items():
        want = b.samples[name]
        left = [Sample(name, (("raw", raw),), v, t or 0.0) for raw, v, t in got]
        right = [Sample(name, (("raw", raw),), v, t or 0.0) for raw, v, t in want]
        if not same_samples(left, right) or [t for *_, t in got] != [t for *_, t in want]:
            return False
    return True


class Reference:
    """The memo and plan path as ``ServerCollector`` takes it, next to the full path."""

    def __init__(self, kind: str, only: bool = True) -> None:
        self.mapping = SERVER_KINDS.load(kind)
        self.only = self.mapping.read_names if only else None
        self.memo = ParseMemo()
        self.plans: dict[int, tuple[Template, MappingPlan | None]] = {}
        self.plan_tries = 0
        self.planned = 0  # scrapes mapped by a compiled plan

    def check(self, body: bytes) -> None:
        want_exp = parse(body, max_bytes=MAX, only=self.only)
        want = map_exposition(self.mapping, want_exp, node=NODE, server=SERVER, ts=1.0)
        got_exp = self.memo.read(body, max_bytes=MAX, max_seconds=1.0, only=self.only)
        if isinstance(got_exp, Exposition):
            assert same_exposition(got_exp, want_exp)
            return
        template, values = got_exp
        assert same_exposition(template.exposition(values), want_exp)
        entry = self.plans.get(id(template))
        if entry is None or entry[0] is not template or entry[1] is None:
            self.plan_tries += 1
            entry = self.plans[id(template)] = (template, compile_mapping(
                self.mapping, template.layout_slots(), values, node=NODE, server=SERVER))
        plan = entry[1]
        got = plan.samples(values, 1.0) if plan is not None else None
        if got is not None:
            self.planned += 1
            assert same_samples(got, want), (body[:200], got[:3], want[:3])


def with_values(text: str, rng: random.Random, choices: list[str]) -> str:
    return _SAMPLE.sub(lambda m: f"{m[1]} {rng.choice(choices)}", text)


def cleaned(text: str) -> str:
    """The payload without the lines the parser rejects (shell prompts in doc pages)."""
    def bad(line: str) -> bool:
        try:
            return parse(line.rstrip("\n") + "\n").invalid_lines > 0
        except ExpositionParseError:
            return True

    return "".join(ln for ln in text.splitlines(keepends=True) if not bad(ln))


def spread(text: str) -> str:
    """Each labelled series also as a tensor-parallel replica, a data-parallel rank, a
    second engine and a second model, so that the tables' sums, maxima and replica
    rules have several series to fold."""
    out = []
    for ln in text.splitlines():
        out.append(ln)
        if _SAMPLE.fullmatch(ln) and "{" in ln:
            out.append(ln.replace("{", '{tp_rank="1",', 1))
            out.append(ln.replace("{", '{dp_rank="1",', 1))
            out.append(ln.replace('engine="0"', 'engine="1"'))
            out.append(re.sub(r'(model(?:_name)?)="[^"]*"', r'\1="second"', ln))
    return "\n".join(out) + "\n"


# Values whose float sum depends on the order and method (0.1 + 0.2 + 0.3 != 0.6).
FOLDS = ["0.1", "0.2", "0.3", "1e16", "1", "-0.0", "0", "3"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.name)
def test_every_recorded_payload_maps_the_same_through_the_memo(path: Path, kind: str) -> None:
    text = path.read_text()
    rng = random.Random(path.name + kind)
    for variant in (text, cleaned(text), spread(cleaned(text))):
        for only in (True, False):
            ref = Reference(kind, only)
            for i in range(4):  # learn, then reuse with new values
                body = variant if i == 0 else with_values(variant, rng, FOLDS)
                ref.check(body.encode())


def test_the_memo_and_the_plan_serve_every_kind() -> None:
    """The memo and the plan must actually be used (else the comparisons prove nothing)."""
    for kind, name in [("vllm", "vllm-0.32-cpu-after-load.prom"),
                       ("vllm", "vllm_aibrix-docs-runtime-v0-engine.prom"),
                       ("sglang", "sglang_docs-production_metrics.prom"),
                       ("triton", "triton-server_docs-metrics-examples.prom")]:
        for text in (cleaned((FIXTURES / name).read_text()),
                     spread(cleaned((FIXTURES / name).read_text()))):
            ref = Reference(kind)
            rng = random.Random(name)
            for _ in range(5):
                ref.check(with_values(text, rng, FOLDS).encode())
            assert ref.memo.hits == 4, name
            assert ref.planned == 4, name


def test_the_memo_and_the_plan_serve_recorded_vllm_scrapes() -> None:
    """The memo must actually be used (otherwise the comparisons above prove nothing)."""
    for name in ("vllm-0.32-cpu-after-load.prom", "vllm-0.32-cpu-idle.prom",
                 "vllm-0.32-cpu-kv-pressure.prom", "vllm_aibrix-docs-runtime-v0-engine.prom"):
        ref = Reference("vllm")
        text = (FIXTURES / name).read_text()
        rng = random.Random(name)
        for _ in range(5):
            ref.check(with_values(text, rng, ["0", "3", "4.25"]).encode())
        assert ref.memo.hits == 4, name
        assert ref.planned == 4, name


def test_replica_ties_keep_the_first_series_sign() -> None:
    """``base``'s replica rule keeps the first of equal values: 0.0 then -0.0 is 0.0."""
    text = re.sub(r"^(sglang:[^{\n]*)\{([^\n]*)$", r'\1{\2\n\1{tp_rank="1",\2',
                  cleaned((FIXTURES / "sglang_docs-production_metrics.prom").read_text()),
                  flags=re.M)  # each series twice: as its tensor-parallel replica too
    assert text.count("tp_rank") > 20
    for first, copy in (("0", "-0.0"), ("-0.0", "0")):
        def value(m: re.Match[str], f: str = first, c: str = copy) -> str:
            return f"{m[1]} {c if 'tp_rank' in m[1] else f}"

        body = _SAMPLE.sub(value, text)
        ref = Reference("sglang")
        for _ in range(3):
            ref.check(body.encode())
        assert ref.planned == 2


VALUES = ["0", "1", "-0.0", "0.0", "2.5", "1e-3", "+Inf", "-Inf", "NaN", "nan", "12345678901",
          "4.2E+2", ".5", "5.", "1_000", "0x10", "", "1 2", "1 1700000000000", "abc",
          "9" * 70, "1#x", "1\t"]


def test_random_values_including_bad_ones_match_a_full_parse() -> None:
    rng = random.Random(14)
    ref = Reference("vllm")
    good = ["0", "1", "2.5", "17", "-0.0", "+Inf"]
    for step in range(300):
        body = with_values(VLLM, rng, good)
        if step % 5 == 0:  # one line with anything from VALUES, or a payload of them
            lines = body.split("\n")
            i = rng.choice([k for k, ln in enumerate(lines) if _SAMPLE.fullmatch(ln)])
            lines[i] = f"{_SAMPLE.fullmatch(lines[i])[1]} {rng.choice(VALUES)}"  # type: ignore[index]
            body = "\n".join(lines) if step % 20 else with_values(VLLM, rng, VALUES)
        ref.check(body.encode())
    assert ref.memo.hits > 100 and ref.planned > 50


def _mutations(rng: random.Random) -> Iterator[str]:
    """Payloads where series come and go, comments change, timestamps appear..."""
    lines = VLLM.splitlines()
    samples = [i for i, ln in enumerate(lines) if _SAMPLE.fullmatch(ln)]
    for _ in range(120):
        out = list(lines)
        what = rng.randrange(9)
        i = rng.choice(samples)
        if what == 0:  # a series disappears
            del out[i]
        elif what == 1:  # a new series (another engine)
            out.insert(i + 1, out[i].replace('engine="0"', 'engine="1"'))
        elif what == 2:  # a label value changes
            out[i] = out[i].replace("tiny-llama", "other-model")
        elif what == 3:  # a comment changes
            j = rng.choice([k for k, ln in enumerate(lines) if ln.startswith("# HELP")])
            out[j] += " (changed)"
        elif what == 4:  # a timestamp
            out[i] += " 1700000000000"
        elif what == 5:  # two lines swap
            out[i], out[i + 1] = out[i + 1], out[i]
        elif what == 6:  # a line of another family inside a skipped one
            out.insert(i, "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3")
        elif what == 7:  # no newline at the end
            yield with_values("\n".join(out), rng, ["1", "2"])
            continue
        text = "\n".join(out) + "\n"
        for _ in range(rng.randrange(1, 6)):  # the layout stays for a few scrapes
            yield with_values(text, rng, ["0", "1", "2.5", "-0.0", "9"])


def test_series_that_come_and_go_never_get_stale_labels_or_values() -> None:
    ref = Reference("vllm")
    for body in _mutations(random.Random(2026)):
        ref.check(body.encode())
    assert ref.memo.hits > 60 and ref.planned > 20


def test_the_memo_holds_one_layout_and_backs_off_a_changing_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded: one template per server, and a layout that changes every scrape (here a
    timestamp on each sample) is learned from at most once per MAX_BACKOFF scrapes once
    the attempts have failed, so it costs little more than a plain parse."""
    calls = []
    real = promtext_memo.learn

    def counting(text: str, exp: Exposition, only: frozenset[str] | None) -> Template | None:
        calls.append(1)
        return real(text, exp, only)

    monkeypatch.setattr(promtext_memo, "learn", counting)
    memo = ParseMemo()
    only = SERVER_KINDS.load("vllm").read_names
    for k in range(400):
        body = _SAMPLE.sub(lambda m: f"{m[1]} {m[2]} {1700000000000 + k}", VLLM)  # noqa: B023
        memo.read(body.encode(), max_bytes=MAX, max_seconds=1.0, only=only)
    assert memo.hits == 0 and memo.template is None
    assert len(calls) <= 400 // MAX_BACKOFF + 7  # 1 + 2 + 4 + ... + 64, then every 64

    # A layout whose label set changes every scrape is learned, never fits, backs off.
    calls.clear()
    for k in range(400):
        body = VLLM.replace("tiny-llama", f"model-{k}")
        memo.read(body.encode(), max_bytes=MAX, max_seconds=1.0, only=only)
    assert memo.hits == 0
    assert len(calls) <= 400 // MAX_BACKOFF + 8

    # And a stable layout is learned again at once after a change, whatever came before.
    calls.clear()
    for _ in range(2 * MAX_BACKOFF + 2):
        memo.read(VLLM.encode(), max_bytes=MAX, max_seconds=1.0, only=only)
    assert memo.hits >= MAX_BACKOFF


def test_a_payload_of_too_many_lines_is_never_memoised(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memo holds one string per line; past MAX_LINES the payload is parsed in full."""
    lines = VLLM.count("\n")
    monkeypatch.setattr(promtext_memo, "MAX_LINES", lines - 1)
    memo = ParseMemo()
    for _ in range(3):
        got = memo.read(VLLM.encode(), max_bytes=MAX, max_seconds=1.0, only=None)
        assert isinstance(got, Exposition) and memo.template is None
    monkeypatch.setattr(promtext_memo, "MAX_LINES", lines)
    for _ in range(3):
        memo.read(VLLM.encode(), max_bytes=MAX, max_seconds=1.0, only=None)
    assert memo.hits == 2


# ---------------------------------------------------------------- through ServerCollector


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_collector_output_equals_parse_and_map_over_changing_scrapes(
        server: ThreadingHTTPServer) -> None:
    port = server.server_address[1]
    c = ServerCollector(NODE, SERVER, "vllm", f"http://127.0.0.1:{port}/metrics",
                        scrape_session())
    mapping = SERVER_KINDS.load("vllm")
    rng = random.Random(7)
    bodies = [with_values(VLLM, rng, ["1", "2", "3.5"]).encode() for _ in range(6)]
    bodies += [b.encode() for b in _mutations(random.Random(8))][:40]
    bodies += [with_values(VLLM, rng, ["0", "-0.0", "NaN", "+Inf", "7"]).encode()
               for _ in range(10)]
    planned = 0
    for body in bodies:
        server.body = body  # type: ignore[attr-defined]
        out = c.collect()
        planned += c._plan is not None and c._plan[1] is not None
        up = [s for s in out if s.signal == "server_up"]
        assert len(up) == 1 and up[0].value == 1.0
        exp = parse(body, only=mapping.read_names)
        want = map_exposition(mapping, exp, node=NODE, server=SERVER, ts=up[0].ts)
        assert same_samples(out[:-1], want)
    assert c._memo.hits > 10 and planned > 10


# A value Go does not read, text after a value (an exemplar: OpenMetrics only), a
# timestamp that is not integer milliseconds: lines Prometheus' text parser refuses.
@pytest.mark.parametrize("value", ["1_000", "1. # 7954", '1 # {trace_id="t"} 1', "1 1.5",
                                   "-NaN"])
def test_invalid_lines_are_still_counted_after_the_memo_learned(
        server: ThreadingHTTPServer, value: str) -> None:
    port = server.server_address[1]
    c = ServerCollector(NODE, SERVER, "vllm", f"http://127.0.0.1:{port}/metrics",
                        scrape_session())
    server.body = VLLM.encode()  # type: ignore[attr-defined]
    for _ in range(3):
        c.collect()
    assert c._memo.hits == 2 and c.parse_errors_total == 0
    line = next(m for m in _SAMPLE.finditer(VLLM) if "num_requests_running" in m[0])
    server.body = VLLM.replace(line[0], f"{line[1]} {value}").encode()  # type: ignore[attr-defined]
    out = c.collect()
    assert c.parse_errors_total == 1
    assert not [s for s in out if s.signal == "requests_running"]
    assert [s.value for s in out if s.signal == "server_up"] == [1.0]  # the rest is used


def test_an_unknown_type_word_is_counted_after_the_memo_learned(
        server: ThreadingHTTPServer) -> None:
    port = server.server_address[1]
    c = ServerCollector(NODE, SERVER, "vllm", f"http://127.0.0.1:{port}/metrics",
                        scrape_session())
    server.body = VLLM.encode()  # type: ignore[attr-defined]
    for _ in range(3):
        before = c.collect()
    assert c._memo.hits == 2 and c.parse_errors_total == 0
    typo = VLLM.replace("# TYPE vllm:num_requests_running gauge",
                        "# TYPE vllm:num_requests_running gaugeeconds")
    assert typo != VLLM
    server.body = typo.encode()  # type: ignore[attr-defined]
    for _ in range(2):  # never learned as a layout: counted on every scrape
        out = c.collect()
    assert c.parse_errors_total == 2 and c._memo.hits == 2
    # The samples are still read: only the type line is refused.
    assert [(s.labels, s.value) for s in out if s.signal == "requests_running"] == \
        [(s.labels, s.value) for s in before if s.signal == "requests_running"] != []
