"""Canary prompts, references and answers never reach the logs or the database.

The canary collector runs against the loopback fake with distinctive strings, through
success, a server error whose body echoes the answer, garbage JSON and a model swap;
its samples go into a real SQLite store. Then the captured log text (DEBUG, every
logger, urllib3 included) and the raw bytes of every file the store left behind
(database, WAL, shared memory) are searched for the strings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gpuwarden.collector.quality.canary import Canary, QualityCollector, canary_id
from gpuwarden.storage import open_store
from tests.collector.quality.fake_openai import FakeOpenAI
from tests.collector.quality.helpers import Clock, drive

SECRETS = {
    "ZQX7-PROMPT-alpha what is the capital of France":
        ("ZQX7-REFERENCE-alpha The capital of France is Paris, on the Seine.",
         "ZQX7-ANSWER-alpha The capital of France is Paris, on the Seine."),
    "ZQX7-PROMPT-beta how do I reverse a list in Python":
        ("ZQX7-REFERENCE-beta Use my_list.reverse() or my_list[::-1] for a copy.",
         "ZQX7-ANSWER-beta Use my_list.reverse() or my_list[::-1] for a copy."),
}
MARKERS = [b"ZQX7", b"PROMPT-alpha", b"REFERENCE-beta", b"ANSWER-alpha", b"capital of France",
           b"reverse() or"]


def test_no_prompt_or_answer_in_logs_or_database(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    canaries = [Canary(canary_id(p, r), p, r, 32, chat=i == 1)
                for i, (p, (r, _)) in enumerate(SECRETS.items())]
    answers = {p: a for p, (_, a) in SECRETS.items()}
    store = open_store(f"sqlite:///{tmp_path / 'gw.db'}", node="n1")
    clock = Clock()
    try:
        with FakeOpenAI(answers, model="served-model-x") as srv:
            coll = QualityCollector("n1", [("vllm-0", srv.url)], canaries, every=4.0,
                                    timeout=2.0, clock=clock)
            try:
                samples = drive(coll, clock, 8)
                srv.status = 500  # error body is JSON; the collector must not echo it
                drive(coll, clock, 4, sink=samples)
                srv.status = 200
                srv.answer = lambda p: "ZQX7-ANSWER-broken " + p  # echoes the prompt
                drive(coll, clock, 8, sink=samples)
            finally:
                coll.close()
        assert coll.answers_total >= 6 and coll.errors_total.get("http_5xx", 0) >= 1
        assert any(s.signal == "quality_similarity" for s in samples)
        store.write(samples)
        store.flush()
        files = sorted(p for p in tmp_path.iterdir() if p.is_file())
        assert any(p.name.endswith("-wal") for p in files) or len(files) >= 1
        for path in files:
            data = path.read_bytes()
            for marker in MARKERS:
                assert marker not in data, f"{marker!r} found in {path.name}"
    finally:
        store.close()
    for path in tmp_path.iterdir():  # after close too (WAL checkpointed into the db)
        data = path.read_bytes()
        for marker in MARKERS:
            assert marker not in data, f"{marker!r} found in {path.name} after close"
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert caplog.records, "expected some log lines (failures, recovery)"
    for marker in MARKERS:
        assert marker.decode() not in text
    # The model label is stored (it is what rollback needs); that is not user text.
    assert "served-model-x" in {dict(s.labels)["model"] for s in samples}
