"""The canary collector against a loopback OpenAI-compatible fake."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from gpuwarden.collector.quality.canary import (
    SEED,
    QualityCollector,
    load_canaries,
    parse_canaries,
    quality_collector,
)
from gpuwarden.config import parse_config
from gpuwarden.errors import CollectorError
from tests.collector.quality.fake_openai import FakeOpenAI
from tests.collector.quality.helpers import PROMPTS, Clock, canaries, drive

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "canaries.jsonl"


def test_parse_canaries_names_lines_and_never_quotes_them() -> None:
    text = ('{"prompt": "SECRET-ONE", "reference": "r"}\n\n# comment\n'
            '{"prompt": "SECRET-TWO"}\n{"prompt": "x", "reference": "y", "max_tokens": 0}\n'
            'not json SECRET-THREE\n{"prompt": "p", "reference": "r", "colour": 1}\n')
    with pytest.raises(ValueError) as err:
        parse_canaries(text, "c.jsonl")
    msg = str(err.value)
    assert "c.jsonl:4: reference" in msg and "c.jsonl:5: max_tokens" in msg
    assert "c.jsonl:6: not a JSON object" in msg and "c.jsonl:7: unknown keys colour" in msg
    assert "SECRET" not in msg


def test_canary_ids_are_stable_digests_and_repr_hides_texts() -> None:
    a = parse_canaries('{"prompt": "SECRET-P", "reference": "SECRET-R", "chat": true}')[0]
    b = parse_canaries('{"prompt": "SECRET-P", "reference": "SECRET-R2"}')[0]
    assert len(a.id) == 12 and a.id != b.id and a.chat and not b.chat
    assert "SECRET" not in repr(a)


def test_example_canaries_file_parses() -> None:
    assert len(load_canaries(EXAMPLES)) >= 5


def test_rounds_are_spread_deterministic_and_scored() -> None:
    clock = Clock()
    with FakeOpenAI(PROMPTS, model="llama-good") as srv:
        coll = QualityCollector("n1", [("vllm-0", srv.url)], canaries(), every=40.0,
                                timeout=5.0, clock=clock)
        try:
            samples = drive(coll, clock, 85)
        finally:
            coll.close()
    posts = list(srv.requests)
    # One canary per 10 s slot: 85 s -> 9 requests, never two at once.
    assert len(posts) == 9 and srv.max_in_flight == 1
    assert all(r["temperature"] == 0 and r["seed"] == SEED and r["max_tokens"] == 64
               and r["model"] == "llama-good" for r in posts)
    paths = Counter(r["path"] for r in posts)
    assert set(paths) == {"/v1/completions", "/v1/chat/completions"}
    per_canary = [s for s in samples if s.signal == "quality_canary_similarity"]
    assert len(per_canary) == 9  # sent at 1, 11, ..., 81 s; each drained a cycle later
    assert all(dict(s.labels)["model"] == "llama-good" and s.value == 1.0 for s in per_canary)
    lengths = [s for s in samples if s.signal == "quality_answer_length"]
    assert {s.value for s in lengths} == {float(len(r)) for r in PROMPTS.values()}
    means = [s for s in samples if s.signal == "quality_similarity"]
    # Re-emitted every cycle once the first round closed (4th answer drained at 32 s).
    assert len(means) == 85 - 32 + 1
    assert {s.labels for s in means} == {
        (("model", "llama-good"), ("node", "n1"), ("server", "vllm-0"))}
    assert all(s.value == 1.0 for s in means)


def test_model_change_starts_a_new_series_and_no_mixed_round() -> None:
    clock = Clock()
    with FakeOpenAI(PROMPTS, model="good") as srv:
        coll = QualityCollector("n1", [("s", srv.url)], canaries(), every=8.0,
                                timeout=5.0, clock=clock)
        try:
            first = drive(coll, clock, 9)
            srv.model = "bad"
            srv.answer = lambda p: "the the the the the the the the the the the the the"
            later = drive(coll, clock, 6)  # finishes the round begun under "good"
            last = drive(coll, clock, 12)
        finally:
            coll.close()
    assert {dict(s.labels)["model"] for s in first if s.signal == "quality_similarity"} == {
        "good"}
    # The round that spanned the swap is not averaged: no "bad" mean from it.
    assert not [s for s in later if s.signal == "quality_similarity"
                and dict(s.labels)["model"] == "bad"]
    bad = [s for s in last if s.signal == "quality_similarity"]
    assert bad and {dict(s.labels)["model"] for s in bad} == {"bad"}
    assert all(s.value < 0.1 for s in bad)


def test_errors_and_timeouts_are_counted_never_fatal() -> None:
    clock = Clock()
    with FakeOpenAI(PROMPTS) as srv:
        coll = QualityCollector("n1", [("s", srv.url), ("gone", "http://127.0.0.1:9")],
                                canaries(), every=4.0, timeout=0.3, clock=clock)
        try:
            srv.status = 503
            drive(coll, clock, 4)
            assert coll.last_error is not None and "s" in coll.last_error
            srv.status, srv.delay = 200, 1.0
            drive(coll, clock, 2)
            srv.delay = 0.0
            drive(coll, clock, 8)
        finally:
            coll.close()
    errors = coll.errors_total
    assert errors["http_5xx"] >= 3 and errors["timeout"] >= 1 and errors["connection"] >= 4
    assert coll.scrape_errors_total is errors
    assert coll.last_error == "canaries failing on gone"
    assert coll.answers_total >= 4


def test_collect_never_waits_for_a_slow_server() -> None:
    with FakeOpenAI(PROMPTS) as srv:
        srv.delay = 1.0
        coll = QualityCollector("n1", [("s", srv.url)], canaries(), every=1.0, timeout=5.0)
        try:
            started = time.perf_counter()
            for _ in range(5):
                coll.collect()
            assert time.perf_counter() - started < 0.2
            assert coll.wait_idle(5.0)
            assert len(srv.requests) == 1  # one in flight, nothing queued behind it
        finally:
            coll.close()


def test_quality_collector_from_config(tmp_path: Path) -> None:
    bad = tmp_path / "canaries.jsonl"
    bad.write_text('{"prompt": "SECRET-X"}\n', encoding="utf-8")
    base = ('node = "n1"\n[[servers]]\nname = "v"\nkind = "vllm"\n'
            'metrics_url = "http://127.0.0.1:1/metrics"\n')
    assert quality_collector(parse_config(base)) is None
    with_api = base + 'api_url = "http://127.0.0.1:1"\n'
    assert quality_collector(parse_config(with_api)) is None  # no [quality] canaries
    cfg = parse_config(with_api + f'[quality]\nevery = "10s"\ncanaries = "{bad}"\n')
    clock = Clock()
    coll = quality_collector(cfg, clock=clock)
    assert coll is not None
    with pytest.raises(CollectorError, match="reference") as err:
        list(coll.collect())
    assert "SECRET" not in str(err.value)
    bad.write_text(EXAMPLES.read_text(encoding="utf-8"), encoding="utf-8")
    clock.t += 11
    assert list(coll.collect()) == []  # loaded now; first canary sent in the background
    coll.close()
