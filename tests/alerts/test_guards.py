"""Guard rails of the dispatcher: cooldown, hourly budget, resolved notices, inhibition,
grouping, escalation, restart memory, default action names, and
secrets kept out of logs, the audit trail and dead letters."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import select

from gpuwarden.storage import Store, schema

from .conftest import Harness, Recorder, Reply, action, firing, make_alert, resolved

T0 = 1_700_000_000.0


def test_cooldown_suppresses_and_resolved_follows_only_sent_firings(
        harness: Harness, recorder: Recorder) -> None:
    d = harness(action(url=recorder.url, cooldown=600.0))
    first, second = make_alert(fired_at=T0), make_alert(fired_at=T0 + 120)
    d.submit([firing(first)])
    assert d.wait_idle()  # sent before its resolve arrives (else superseded, see below)
    d.submit([resolved(first)])
    d.submit([firing(second)])  # a new activation inside the cooldown
    d.submit([resolved(second)])
    assert d.wait_idle()
    time.sleep(0.05)
    statuses = [r.json()["status"] for r in recorder.requests]
    assert statuses == ["firing", "resolved"]  # nothing for the suppressed activation
    results = harness.results()
    assert sorted(r for r, _ in results) == ["sent", "sent", "suppressed"]
    (reason,) = [why for r, why in results if r == "suppressed"]
    assert reason.startswith("cooldown 10m: last call")


def test_hourly_budget(harness: Harness, recorder: Recorder) -> None:
    d = harness(action(url=recorder.url, max_per_hour=2))
    for i in range(3):
        a = make_alert(fired_at=T0 + 100 * i)
        d.submit([firing(a)])
        assert d.wait_idle()
        d.submit([resolved(a, T0 + 100 * i + 50)])
    assert d.wait_idle()
    assert len(recorder.requests) == 4  # two firings, two resolves
    assert [r for r in harness.results() if r[0] == "suppressed"] == [
        ("suppressed", "max_per_hour 2 reached for this target")]


def test_budget_is_per_target(harness: Harness, recorder: Recorder) -> None:
    d = harness(action(url=recorder.url, max_per_hour=1))
    d.submit([firing(make_alert(server="vllm-0")), firing(make_alert(server="vllm-1"))])
    assert d.wait_idle()
    assert len(recorder.requests) == 2


def test_inhibition_by_server_down(harness: Harness, recorder: Recorder) -> None:
    d = harness(action(url=recorder.url))
    down = make_alert("ServerDown", server="vllm-0", summary="server down")
    kv0 = make_alert("KVCacheNearFull", server="vllm-0")
    kv1 = make_alert("KVCacheNearFull", server="vllm-1")
    itl0 = make_alert("TokenLatencyP95High", server="vllm-0")
    d.submit([firing(kv0), firing(down), firing(kv1), firing(itl0)])
    d.submit([resolved(kv0)])
    assert d.wait_idle()
    sent = sorted((r.json()["alerts"][0]["labels"]["alertname"],
                   r.json()["alerts"][0]["labels"]["server"], r.json()["status"])
                  for r in recorder.requests)
    assert sent == [("KVCacheNearFull", "vllm-1", "firing"), ("ServerDown", "vllm-0", "firing")]
    suppressed = harness.audit(result="suppressed")
    assert {r.target for r in suppressed} == {
        'KVCacheNearFull{node="n1", server="vllm-0", severity="warning"}',
        'TokenLatencyP95High{node="n1", server="vllm-0", severity="warning"}'}
    assert {r.reason for r in suppressed} == {"inhibited by ServerDown"}
    # Once the server is back, its KV alert is delivered again.
    d.submit([resolved(down), firing(make_alert("KVCacheNearFull", server="vllm-0",
                                                fired_at=T0 + 300))])
    assert d.wait_idle()
    assert len(recorder.requests) == 4


def test_grouping_within_group_wait(harness: Harness, recorder: Recorder) -> None:
    d = harness(action(url=recorder.url, group_wait=0.3))
    started = time.monotonic()
    for i in range(3):
        d.submit([firing(make_alert(server=f"vllm-{i}"))])
        time.sleep(0.05)
    d.submit([firing(make_alert("ServerDown", server="vllm-9"))])
    reqs = recorder.wait(2, timeout=3)
    assert time.monotonic() - started >= 0.3
    bodies = sorted((r.json() for r in reqs), key=lambda b: len(b["alerts"]))
    assert [len(b["alerts"]) for b in bodies] == [1, 3]
    kv = bodies[1]
    assert kv["groupLabels"] == {"alertname": "KVCacheNearFull"}
    assert kv["commonLabels"] == {"alertname": "KVCacheNearFull", "node": "n1",
                                  "severity": "warning"}
    assert len({r.headers.get("content-length") for r in reqs}) == 2


def test_resolved_within_group_wait_is_never_sent(harness: Harness,
                                                  recorder: Recorder) -> None:
    d = harness(action(url=recorder.url, group_wait=0.2))
    a = make_alert()
    d.submit([firing(a)])
    d.submit([resolved(a)])
    assert d.wait_idle()
    time.sleep(0.3)
    assert recorder.requests == []
    assert harness.results() == [("suppressed",
                                  "resolved within group_wait, before it was sent")]


def test_escalation_when_still_firing(harness: Harness, recorder: Recorder) -> None:
    restart = action("warm-restart", url=recorder.url + "/restart", verify=0.3,
                     escalate_to="checkpoint-rollback")
    rollback = action("checkpoint-rollback", url=recorder.url + "/rollback")
    d = harness(restart, rollback)
    a = make_alert("TokenLatencyP95High", actions=("warm-restart",))
    d.submit([firing(a)])
    reqs = recorder.wait(2, timeout=3)
    assert [r.path for r in reqs] == ["/restart", "/rollback"]
    assert reqs[1].at - reqs[0].at >= 0.28
    assert d.wait_idle()
    esc = harness.audit(result="escalated")
    assert len(esc) == 1 and esc[0].action == "warm-restart"
    assert esc[0].reason == "still firing 300ms after warm-restart; escalating to " \
                            "checkpoint-rollback"
    # The rollback saw the firing, so it gets the resolve too.
    d.submit([resolved(a)])
    reqs = recorder.wait(4)
    assert sorted(r.path for r in reqs[2:]) == ["/restart", "/rollback"]


def test_no_escalation_when_resolved_in_time(harness: Harness, recorder: Recorder) -> None:
    restart = action("warm-restart", url=recorder.url + "/restart", verify=0.3,
                     escalate_to="checkpoint-rollback")
    d = harness(restart, action("checkpoint-rollback", url=recorder.url + "/rollback"))
    a = make_alert("TokenLatencyP95High", actions=("warm-restart",))
    d.submit([firing(a)])
    recorder.wait(1)
    d.submit([resolved(a)])
    time.sleep(0.5)
    assert d.wait_idle()
    assert [r.path for r in recorder.requests] == ["/restart", "/restart"]
    assert harness.audit(result="escalated") == []


def test_undefined_default_action_is_shown_only(harness: Harness, recorder: Recorder) -> None:
    d = harness(action(url=recorder.url))
    d.submit([firing(make_alert(actions=("notify",)))])
    assert d.wait_idle()
    assert recorder.requests == []
    assert harness.results() == [
        ("no_action", "no [[actions]] named 'notify': alert shown only")]


def test_rule_actions_mapping_overrides(harness: Harness, recorder: Recorder) -> None:
    d = harness(action("a", url=recorder.url + "/a"), action("b", url=recorder.url + "/b"))
    d.submit([firing(make_alert(actions=("a",)))], {"KVCacheNearFull": ("b",)})
    assert [r.path for r in recorder.wait(1)] == ["/b"]


def test_restart_keeps_cooldown_and_sends_resolve(dstore: Store, recorder: Recorder) -> None:
    first = Harness(dstore)
    d1 = first(action(url=recorder.url, cooldown=600.0))
    a = make_alert()
    d1.submit([firing(a)])
    assert d1.wait_idle()
    first.close()
    second = Harness(dstore)
    try:
        d2 = second(action(url=recorder.url, cooldown=600.0))
        d2.submit([firing(make_alert(server="vllm-0", fired_at=T0 + 10, summary="again"))])
        d2.submit([resolved(a)])  # the firing was sent before the restart
        assert d2.wait_idle()
        assert [r.json()["status"] for r in recorder.requests] == ["firing", "resolved"]
        assert (second.audit(result="suppressed")[0].reason or "").startswith("cooldown")
    finally:
        second.close()


SECRETS = {
    "GW_T_WEBHOOK_SECRET": "whsec_c3VwZXItc2VjcmV0LXNpZ25pbmcta2V5LTEyMzQ=",
    "GW_T_BEARER": "bearer-token-abcdef987654",
    "GW_T_PD_KEY": "R0UT1NGKEYsecretsecretsecret0123",
}
SLACK_TOKEN = "T0SECRET/B0SECRET/XXXXslacktokenXXXX"


def test_secrets_never_logged_audited_or_dead_lettered(
        harness: Harness, recorder: Recorder, dstore: Store,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    recorder.default = Reply(500, body=b"upstream " + SECRETS["GW_T_BEARER"].encode())
    d = harness(
        action("hook", url=recorder.url + "/hook?token=qs-secret-token",
               secret_env="GW_T_WEBHOOK_SECRET", bearer_token_env="GW_T_BEARER"),
        action("pd", "pagerduty", url=recorder.url + "/v2/enqueue",
               routing_key_env="GW_T_PD_KEY"),
        action("pd-dry", "pagerduty", url=recorder.url, routing_key_env="GW_T_PD_KEY",
               dry_run=True),
        action("slack", "slack", url=f"http://127.0.0.1:9/services/{SLACK_TOKEN}"),
        action("gone", "slack", url=f"{recorder.url}/services/{SLACK_TOKEN}"),
    )
    # Everything gpuwarden logs, at DEBUG. (urllib3's own DEBUG lines quote request paths;
    # the CLI keeps urllib3 at WARNING.)
    with caplog.at_level(logging.DEBUG, logger="gpuwarden"):
        d.submit([firing(make_alert(actions=("hook", "pd", "pd-dry", "slack")))])
        assert d.wait_idle(15)
        recorder.default = Reply(410)
        d.submit([firing(make_alert(actions=("gone",)))])
        assert d.wait_idle(15)
    assert any(r.headers.get("authorization") for r in recorder.requests)  # really used
    with dstore.engine.connect() as conn:
        audit_rows = conn.execute(select(schema.audit)).all()
        letters = conn.execute(select(schema.dead_letters)).all()
    assert len(letters) == 4  # hook, pd, slack (refused), gone (410)
    assert {r.result for r in audit_rows} >= {"failed", "dead_letter", "dry_run", "disabled"}
    haystack = caplog.text + repr(audit_rows) + repr(letters)
    for secret in [*SECRETS.values(), "slacktoken", "qs-secret-token", "T0SECRET",
                   "c3VwZXItc2VjcmV0"]:
        assert secret not in haystack, secret
    assert "ACTION gone DISABLED" in caplog.text and "http://127.0.0.1:" in caplog.text
