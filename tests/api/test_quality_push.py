"""POST /api/v1/quality handler: validation, auth, what reaches the sink."""

from __future__ import annotations

import json
from email.message import Message
from typing import Any

import pytest

from gpuwarden.api.quality_push import MAX_BODY_BYTES, api_token, handle_quality_post
from gpuwarden.model import Sample


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[Sample]] = []

    def __call__(self, samples: list[Sample]) -> None:
        self.batches.append(samples)


def post(payload: Any, headers: Any = None, token: str | None = None,
         sink: Any = None) -> tuple[int, dict[str, Any], Sink]:
    s = sink if sink is not None else Sink()
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, doc = handle_quality_post(body, headers or {}, token=token, sink=s, node="n1",
                                      now=1000.0)
    return status, doc, s


def test_accepts_one_or_many_and_feeds_both_signals() -> None:
    status, doc, sink = post({"server": "vllm-0", "model": "m1", "score": 0.93})
    assert (status, doc) == (202, {"accepted": 1})
    (batch,) = sink.batches
    assert {(s.signal, dict(s.labels).get("canary"), s.value, s.ts) for s in batch} == {
        ("quality_similarity", None, 0.93, 1000.0),
        ("quality_canary_similarity", "external", 0.93, 1000.0)}
    assert all(dict(s.labels)["node"] == "n1" and dict(s.labels)["model"] == "m1"
               for s in batch)
    status, doc, sink = post([{"server": "a", "model": "m", "score": 1},
                              {"server": "a", "model": "m", "score": 0.5},
                              {"server": "b", "model": "m", "score": 0}])
    assert (status, doc) == (202, {"accepted": 3})
    sim = {dict(s.labels)["server"]: s.value for s in sink.batches[0]
           if s.signal == "quality_similarity"}
    assert sim == {"a": 0.75, "b": 0.0}


@pytest.mark.parametrize(("payload", "fragment"), [
    (b"{not json", "not valid UTF-8 JSON"),
    (b"\xff\xfe", "not valid UTF-8 JSON"),
    ([], "empty list"),
    ("just a string", "expected an object"),
    ({"server": "s", "model": "m"}, "score: must be a number"),
    ({"server": "s", "model": "m", "score": 1.5}, "score: must be a number in [0, 1]"),
    ({"server": "s", "model": "m", "score": -0.1}, "[0, 1]"),
    ({"server": "s", "model": "m", "score": True}, "score"),
    ({"server": "s", "model": "m", "score": "0.9"}, "score"),
    ({"server": "", "model": "m", "score": 0.9}, "server: must be a non-empty string"),
    ({"server": "s", "model": 3, "score": 0.9}, "model: must be a non-empty string"),
    ({"server": "s\n", "model": "m", "score": 0.9}, "printable"),
    ({"server": "s", "model": "m", "score": 0.9, "prompt": "SECRET-PROMPT"},
     "unknown keys prompt"),
    ([{"server": "s", "model": "m", "score": 0.9}, {"server": "s"}], "[1].model"),
    ([{"server": "s", "model": "m", "score": 0.5}] * 1001, "at most 1000"),
])
def test_bad_input_is_400_with_a_clear_message(payload: Any, fragment: str) -> None:
    status, doc, sink = post(payload)
    assert status == 400 and fragment in doc["error"]
    assert "SECRET" not in doc["error"] and not sink.batches


def test_nan_score_rejected() -> None:
    status, doc, _ = post(b'{"server": "s", "model": "m", "score": NaN}')
    assert status == 400 and "[0, 1]" in doc["error"]


def test_oversized_body() -> None:
    body = b'{"server": "s", "model": "m", "score": 0.5, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    status, _, sink = post(body)
    assert status == 413 and not sink.batches


def test_token_required_and_compared() -> None:
    ok = {"server": "s", "model": "m", "score": 0.9}
    assert post(ok, token="s3cret")[0] == 401
    assert post(ok, {"Authorization": "Bearer wrong"}, token="s3cret")[0] == 401
    assert post(ok, {"Authorization": "Basic s3cret"}, token="s3cret")[0] == 401
    assert post(ok, {"authorization": "Bearer s3cret"}, token="s3cret")[0] == 202
    msg = Message()
    msg["Authorization"] = "bearer s3cret"
    assert post(ok, msg, token="s3cret")[0] == 202
    # Bad input behind a token: the token is checked first (no probing without it).
    assert post(b"{", {}, token="s3cret")[0] == 401
    assert post(ok, {}, token="")[0] == 503


def test_sink_failure_is_503() -> None:
    def broken(_samples: list[Sample]) -> None:
        raise OSError("disk full")

    status, doc, _ = post({"server": "s", "model": "m", "score": 0.9}, sink=broken)
    assert status == 503 and "OSError" in doc["error"]


def test_api_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert api_token(None) is None
    monkeypatch.delenv("GW_TEST_TOKEN", raising=False)
    assert api_token("GW_TEST_TOKEN") == ""
    monkeypatch.setenv("GW_TEST_TOKEN", "abc\n")
    assert api_token("GW_TEST_TOKEN") == "abc"
