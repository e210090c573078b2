"""Dispatcher delivery against real loopback receivers: retries, 429, 410, dead letters,
dry-run, non-blocking submit, Alertmanager resends, metrics."""

from __future__ import annotations

import logging
import time

import pytest
import requests

from gpuwarden.alerts.dispatch import Dispatcher
from gpuwarden.alerts.receivers.base import RetryPolicy
from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import Store

from .conftest import Harness, Recorder, Reply, action, firing, make_alert, resolved


def test_retries_with_backoff_then_success(harness: Harness, recorder: Recorder) -> None:
    recorder.script.extend([Reply(503), Reply(502)])
    d = harness(action(url=recorder.url, secret_env=None))
    d.submit([firing(make_alert())])
    reqs = recorder.wait(3)
    assert d.wait_idle()
    assert len({r.json()["alerts"][0]["fingerprint"] for r in reqs}) == 1
    assert reqs[1].at - reqs[0].at >= 0.004 and reqs[2].at - reqs[1].at >= 0.009
    rows = harness.audit()
    assert [(r.result, r.attempt, r.http_status) for r in rows] == [
        ("failed", 1, 503), ("failed", 2, 502), ("sent", 3, 200)]
    assert "retrying in" in (rows[0].reason or "")
    assert rows[0].target == ('KVCacheNearFull{node="n1", server="vllm-0", '
                              'severity="warning"}')


def test_webhook_id_is_stable_across_retries(harness: Harness, recorder: Recorder,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_SECRET", "s3cret")
    recorder.script.append(Reply(500))
    d = harness(action(url=recorder.url, secret_env="GW_TEST_SECRET"))
    d.submit([firing(make_alert())])
    r1, r2 = recorder.wait(2)
    assert r1.headers["webhook-id"] == r2.headers["webhook-id"]
    assert r1.headers["webhook-id"].startswith("msg_")


def test_429_retry_after_is_honoured(harness: Harness, recorder: Recorder) -> None:
    recorder.script.append(Reply(429, {"Retry-After": "1"}))
    d = harness(action(url=recorder.url))
    d.submit([firing(make_alert())])
    r1, r2 = recorder.wait(2, timeout=5)
    assert 0.9 <= r2.at - r1.at < 2.0
    assert d.wait_idle()
    assert [r.result for r in harness.audit()] == ["failed", "sent"]


def test_retry_after_is_capped(harness: Harness, recorder: Recorder) -> None:
    recorder.script.append(Reply(429, {"Retry-After": "3600"}))
    d = harness(action(url=recorder.url),
                retry=RetryPolicy(attempts=2, base=0.01, max_retry_after=0.2))
    d.submit([firing(make_alert())])
    r1, r2 = recorder.wait(2, timeout=3)
    assert r2.at - r1.at < 1.0


def test_410_disables_the_endpoint(harness: Harness, recorder: Recorder,
                                   caplog: pytest.LogCaptureFixture) -> None:
    recorder.default = Reply(410)
    d = harness(action(url=recorder.url))
    with caplog.at_level(logging.ERROR, logger="gpuwarden"):
        d.submit([firing(make_alert())])
        assert d.wait_idle()
    assert any("DISABLED" in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records)
    d.submit([firing(make_alert(server="vllm-1"))])
    assert d.wait_idle()
    assert len(recorder.requests) == 1  # never called again
    assert [r.result for r in harness.audit()] == ["disabled", "dead_letter", "disabled"]
    assert d.is_disabled("hook")


def test_other_4xx_fails_at_once_into_dead_letters(harness: Harness,
                                                   recorder: Recorder) -> None:
    recorder.default = Reply(400)
    d = harness(action(url=recorder.url))
    d.submit([firing(make_alert())])
    assert d.wait_idle()
    assert len(recorder.requests) == 1
    assert [(r.result, r.http_status) for r in harness.audit()] == [
        ("failed", 400), ("dead_letter", None)]
    assert d.audit is not None and len(d.audit.dead_letters()) == 1


def test_dry_run_sends_nothing(harness: Harness, recorder: Recorder) -> None:
    d = harness(action(url=recorder.url + "/secret/path", dry_run=True))
    a = make_alert()
    d.submit([firing(a)])
    assert d.wait_idle()  # a resolve arriving before would supersede the firing
    d.submit([resolved(a)])
    assert d.wait_idle()
    time.sleep(0.05)
    assert recorder.requests == []
    rows = harness.audit()
    assert [(r.result, r.detail["status"]) for r in rows] == [("dry_run", "firing"),
                                                              ("dry_run", "resolved")]
    assert rows[0].detail["endpoint"] == recorder.url
    assert "secret" not in str(rows)


def test_submit_never_blocks_the_cycle(harness: Harness, recorder: Recorder,
                                       dstore: Store) -> None:
    """The receiver takes 5 s; submit stays in microseconds and a cycle is unaffected."""
    recorder.default = Reply(delay=5.0)
    harness.stop_timeout = 0.3  # what is still in flight becomes a dead letter
    d = harness(action(url=recorder.url, timeout=10.0))
    samples = [Sample("kv_cache_usage_ratio", make_labels(node="n1", server=f"s{i}"), 0.5,
                      1_700_000_000.0) for i in range(500)]

    def cycle(t: float, events: bool) -> float:
        started = time.perf_counter()
        dstore.write([Sample(s.signal, s.labels, s.value, t) for s in samples])
        if events:
            d.submit([firing(make_alert(server=f"vllm-{t}"))])
        return time.perf_counter() - started

    base = min(cycle(1_700_000_000.0 + i, False) for i in range(5))
    took = []
    for i in range(5):
        started = time.perf_counter()
        d.submit([firing(make_alert(server=f"x{i}"))])
        took.append(time.perf_counter() - started)
    assert max(took) < 0.005
    with_delivery = min(cycle(1_700_000_010.0 + i, True) for i in range(5))
    assert recorder.wait(1, timeout=2)  # the slow receiver is really being called
    assert with_delivery < base + 0.005


def test_full_queue_drops_oldest(dstore: Store, caplog: pytest.LogCaptureFixture) -> None:
    import requests

    d = Dispatcher([action(url="http://127.0.0.1:9")], engine=dstore.engine,
                   session=requests.Session(), node="n1", queue_size=3)  # not started
    with caplog.at_level(logging.ERROR, logger="gpuwarden"):
        d.submit([firing(make_alert(server=f"s{i}")) for i in range(5)])
    assert d.dropped_total == 2
    assert "queue full" in caplog.text
    metrics = {m.name: m for m in d.metrics()}
    assert metrics["delivery_queue_length"].samples[0][1] == 3.0
    assert metrics["delivery_events_dropped"].samples[0][1] == 2.0


def test_metrics_count_results(harness: Harness, recorder: Recorder) -> None:
    d = harness(action(url=recorder.url))
    d.submit([firing(make_alert()), firing(make_alert(server="vllm-1"))])
    assert d.wait_idle()
    actions = {m.name: m for m in d.metrics()}["actions"]
    assert actions.kind == "counter"
    assert ({"action": "hook", "result": "sent"}, 2.0) in actions.samples


def test_alertmanager_resends_while_firing(harness: Harness, recorder: Recorder) -> None:
    d = harness(action("am", "alertmanager", url=recorder.url), am_resend=0.15,
                am_resolved_resend=0.4)
    a = make_alert(actions=("am",))
    d.submit([firing(a)])
    recorder.wait(3, timeout=3)  # first send + two resends
    ends = [r.json()[0]["endsAt"] for r in recorder.requests[:3]]
    assert ends[0] <= ends[1] <= ends[2]
    d.submit([resolved(a)])
    time.sleep(0.9)
    after = [r.json()[0]["endsAt"] for r in recorder.requests[3:]]
    assert after and all(e == "2023-11-14T22:14:20.000Z" for e in after)
    n = len(recorder.requests)
    time.sleep(0.4)
    assert len(recorder.requests) == n  # resolved resends stopped after 0.4 s
    assert [r.result for r in harness.audit()] == ["sent", "sent"]  # resends not audited


def test_a_session_maker_is_called_by_the_first_delivery_not_before(
        harness: Harness, recorder: Recorder) -> None:
    # The daemon passes what makes its session, so a node that never delivers over
    # HTTP never imports requests (daemon/wiring.py LazySession).
    made: list[int] = []

    def make() -> requests.Session:
        made.append(1)
        return harness.session

    d = harness(action(url=recorder.url, secret_env=None), session=make)
    assert made == []
    d.submit([firing(make_alert())])
    assert len(recorder.wait(1)) == 1
    assert d.wait_idle()
    assert made and [r.result for r in harness.audit()] == ["sent"]
