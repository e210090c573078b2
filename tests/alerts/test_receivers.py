"""Receivers against a real HTTP server on loopback: bodies, signatures, exec."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from gpuwarden.alerts.alert import Alert
from gpuwarden.alerts.payload import ZERO_TIME, alert_entry, delivery_id, origin, secret_key
from gpuwarden.alerts.receivers.base import (
    Delivery,
    Receiver,
    ReceiverContext,
    RetryPolicy,
    classify_status,
    parse_retry_after,
)
from gpuwarden.alerts.receivers.registry import RECEIVERS, build_receiver

from .conftest import Recorder, action, make_alert, resolved

GEN = "http://127.0.0.1:9842/api/v1/alerts"
KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = requests.Session()
    yield s
    s.close()


def receiver(session: requests.Session, **kw: Any) -> Receiver:
    ctx = ReceiverContext(session=session, node="n1", external_url="http://127.0.0.1:9842",
                          interval=1.0, am_resend=60.0)
    return build_receiver(action(**kw), ctx)


def delivery(*pairs: tuple[Alert, str], act: str = "hook") -> Delivery:
    entries = []
    for alert, status in pairs:
        a = alert if status == "firing" else resolved(alert).alert
        entries.append(alert_entry(a, status, at=1_700_000_100.0, generator_url=GEN))
    status = "firing" if any(s == "firing" for _, s in pairs) else "resolved"
    rule = entries[0]["labels"]["alertname"]
    return Delivery(id=delivery_id(act, status, entries), action=act, status=status,
                    rule=rule, alerts=tuple(entries), created=time.time(),
                    group_labels=(("alertname", rule),))


def verify_standard_webhooks(key: bytes, headers: dict[str, str], body: bytes) -> bool:
    """An independent verifier written from the spec: HMAC-SHA256 of "id.ts.body"."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for sig in headers["webhook-signature"].split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


def test_webhook_body_is_alertmanager_v4(recorder: Recorder, session: requests.Session) -> None:
    a1 = make_alert(server="vllm-0")
    a2 = make_alert(server="vllm-1", summary="KV cache 97% full")
    out = receiver(session, url=recorder.url + "/hook").send(delivery((a1, "firing"),
                                                                      (a2, "firing")))
    assert out.ok and out.http_status == 200
    (req,) = recorder.wait(1)
    assert req.path == "/hook" and req.headers["content-type"] == "application/json"
    body = req.json()
    assert body["version"] == "4" and body["receiver"] == "hook"
    assert body["status"] == "firing" and body["truncatedAlerts"] == 0
    assert body["groupLabels"] == {"alertname": "KVCacheNearFull"}
    assert body["groupKey"] == '{}:{alertname="KVCacheNearFull"}'
    assert body["commonLabels"] == {"alertname": "KVCacheNearFull", "node": "n1",
                                    "severity": "warning"}
    assert body["commonAnnotations"] == {}
    assert body["externalURL"] == "http://127.0.0.1:9842"
    first = body["alerts"][0]
    assert set(first) == {"status", "labels", "annotations", "startsAt", "endsAt",
                          "generatorURL", "fingerprint"}
    assert first["status"] == "firing" and first["endsAt"] == ZERO_TIME
    assert first["startsAt"] == "2023-11-14T22:13:20Z"  # Go trims zeros
    assert first["fingerprint"] == a1.fingerprint and first["generatorURL"] == GEN
    assert "webhook-signature" not in req.headers  # no secret configured


def test_webhook_resolved_has_end_time(recorder: Recorder, session: requests.Session) -> None:
    a = make_alert()
    receiver(session, url=recorder.url).send(delivery((a, "resolved")))
    body = recorder.wait(1)[0].json()
    assert body["status"] == "resolved"
    assert body["alerts"][0]["endsAt"] == "2023-11-14T22:14:20Z"


def test_webhook_signature_verifies(recorder: Recorder, session: requests.Session,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_SECRET", SECRET)
    rec = receiver(session, url=recorder.url, secret_env="GW_TEST_SECRET")
    d = delivery((make_alert(), "firing"))
    before = int(time.time())
    assert rec.send(d).ok and rec.send(d).ok  # a retry of the same delivery
    r1, r2 = recorder.wait(2)
    for req in (r1, r2):
        # The reference implementation (standardwebhooks on PyPI) and our own verifier.
        assert Webhook(SECRET).verify(req.body, req.headers) == req.json()
        assert verify_standard_webhooks(KEY, req.headers, req.body)
        assert req.headers["webhook-id"] == d.id
        assert before <= int(req.headers["webhook-timestamp"]) <= int(time.time())
        assert req.headers["webhook-signature"].startswith("v1,")
    assert r1.headers["webhook-id"] == r2.headers["webhook-id"]  # stable across retries
    assert not verify_standard_webhooks(b"wrong key", r1.headers, r1.body)


def test_webhook_raw_secret_from_file_and_headers(recorder: Recorder, session: requests.Session,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_text("plain-text password\n")
    monkeypatch.setenv("GW_TEST_TOKEN", "tok-123")
    rec = receiver(session, url=recorder.url, secret_file=str(tmp_path / "secret"),
                   bearer_token_env="GW_TEST_TOKEN", headers=(("X-Team", "ml-infra"),))
    assert rec.send(delivery((make_alert(), "firing"))).ok
    req = recorder.wait(1)[0]
    assert verify_standard_webhooks(b"plain-text password", req.headers, req.body)
    assert Webhook(b"plain-text password").verify(req.body, req.headers)
    assert req.headers["authorization"] == "Bearer tok-123"
    assert req.headers["x-team"] == "ml-infra"


def test_missing_secret_is_a_permanent_failure(recorder: Recorder,
                                               session: requests.Session) -> None:
    rec = receiver(session, url=recorder.url, secret_env="GW_TEST_UNSET_SECRET")
    out = rec.send(delivery((make_alert(), "firing")))
    assert not out.ok and not out.retryable and "GW_TEST_UNSET_SECRET" in (out.error or "")
    assert recorder.requests == []  # never sent unsigned


def test_secret_key_forms() -> None:
    assert secret_key(SECRET) == KEY
    assert secret_key("whsec_" + base64.b64encode(KEY).decode().rstrip("=")) == KEY
    assert secret_key("hunter2") == b"hunter2"
    with pytest.raises(ValueError):
        secret_key("whsec_***")


def test_alertmanager_postable_alerts(recorder: Recorder, session: requests.Session) -> None:
    a = make_alert()
    rec = receiver(session, type="alertmanager", url=recorder.url + "/")
    now = time.time()
    assert rec.send(delivery((a, "firing"))).ok
    rec.send(delivery((a, "resolved")))
    r1, r2 = recorder.wait(2)
    assert r1.path == "/api/v2/alerts"
    (posted,) = r1.json()
    assert set(posted) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert posted["labels"]["alertname"] == "KVCacheNearFull"
    ends = datetime.fromisoformat(posted["endsAt"].replace("Z", "+00:00")).timestamp()
    assert 235 <= ends - now <= 245  # 4 x max(interval 1 s, resend 60 s)
    assert r2.json()[0]["endsAt"] == "2023-11-14T22:14:20.000Z"


def test_pagerduty_events_v2(recorder: Recorder, session: requests.Session,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_PD_KEY", "R0UTINGKEY0123456789abcdef012345")
    rec = receiver(session, type="pagerduty", url=recorder.url + "/v2/enqueue",
                   routing_key_env="GW_TEST_PD_KEY")
    a = make_alert(severity="page")
    recorder.default.status = 202
    assert rec.send(delivery((a, "firing"))).ok
    assert rec.send(delivery((a, "resolved"))).ok
    trig, res = (r.json() for r in recorder.wait(2))
    assert trig["routing_key"] == "R0UTINGKEY0123456789abcdef012345"
    assert trig["event_action"] == "trigger" and trig["dedup_key"] == a.fingerprint
    p = trig["payload"]
    assert p["severity"] == "critical" and p["source"] == "n1"
    assert p["summary"] == "KVCacheNearFull on n1/vllm-0: KV cache 95% full"
    assert p["custom_details"]["labels"]["server"] == "vllm-0"
    assert p["custom_details"]["annotations"] == {"summary": "KV cache 95% full"}
    assert res["event_action"] == "resolve" and res["dedup_key"] == a.fingerprint
    assert "payload" not in res


def test_slack_text(recorder: Recorder, session: requests.Session) -> None:
    rec = receiver(session, type="slack", url=recorder.url + "/services/T0/B0/SECRET")
    assert rec.send(delivery((make_alert(), "firing"))).ok
    text = recorder.wait(1)[0].json()["text"]
    assert "[FIRING]" in text and "KVCacheNearFull" in text and "n1/vllm-0" in text
    assert "KV cache 95% full" in text
    assert rec.describe(delivery((make_alert(), "firing")))["endpoint"] == recorder.url
    assert "SECRET" not in json.dumps(rec.describe(delivery((make_alert(), "firing"))))


def test_slack_revoked_url_is_permanent(recorder: Recorder, session: requests.Session) -> None:
    recorder.default.status, recorder.default.body = 404, b"no_team"
    out = receiver(session, type="slack", url=recorder.url).send(
        delivery((make_alert(), "firing")))
    assert not out.ok and not out.retryable and out.http_status == 404


def test_timeout_and_refused_are_retryable(recorder: Recorder,
                                           session: requests.Session) -> None:
    recorder.default.delay = 1.0
    out = receiver(session, url=recorder.url + "/tok/SECRETPATH", timeout=0.2).send(
        delivery((make_alert(), "firing")))
    assert not out.ok and out.retryable and "timeout" in (out.error or "")
    assert "SECRETPATH" not in (out.error or "")
    out = receiver(session, url="http://127.0.0.1:9/x/SECRETPATH").send(
        delivery((make_alert(), "firing")))
    assert not out.ok and out.retryable and out.error == "ConnectionError (http://127.0.0.1:9)"


def test_reached_tells_refused_from_answered(recorder: Recorder,
                                             session: requests.Session) -> None:
    """Whether the receiver may have got the request decides if a resolve that
    supersedes the firing is sent: refused -> certainly not; an answer or a read
    timeout -> maybe."""
    d = delivery((make_alert(), "firing"))
    assert not receiver(session, url="http://127.0.0.1:9/x").send(d).reached
    recorder.default.status = 503
    assert receiver(session, url=recorder.url).send(d).reached
    recorder.default.delay = 1.0
    assert receiver(session, url=recorder.url, timeout=0.2).send(d).reached


def test_retry_schedule_is_the_documented_one() -> None:
    """The attempt times in the module doc's table, and the window's end is tried."""
    from gpuwarden.alerts.receivers import base as receivers

    times = RetryPolicy().nominal(900.0)
    assert times[:9] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 63.5, 123.5]
    assert times[-2:] == [843.5, 900.0] and len(times) == 22
    rows = [line.split() for line in (receivers.__doc__ or "").splitlines()]
    table = {int(r[0]): float(r[1]) for r in rows if len(r) >= 2 and r[0].isdigit()}
    assert table == {n + 1: t for n, t in enumerate(times) if n < 8 or t == 900.0}
    policy = RetryPolicy(rng=random.Random(1))
    elapsed, n = 0.0, 1
    waits = []
    while (wait := policy.next_delay(n, elapsed, 900.0)) is not None:
        waits.append(wait)
        elapsed += wait
        n += 1
    assert elapsed == pytest.approx(900.0) and 22 <= n <= 24
    assert max(waits) <= 60.0 and all(w >= 48.0 for w in waits[8:-1])
    assert policy.next_delay(1, 0.0, 0.0) is None  # retry_for 0: one attempt
    assert policy.next_delay(1, 0.0, 900.0, retry_after=0.0) == 0.5  # no busy loop
    assert policy.next_delay(1, 0.0, 900.0, retry_after=86400.0) == 300.0  # capped
    assert policy.next_delay(1, 850.0, 900.0, retry_after=120.0) == 50.0  # window's end
    assert RetryPolicy(attempts=3).next_delay(3, 1.0, 900.0) is None


def test_classification() -> None:
    now = 1_700_000_000.0
    assert classify_status(204, {}, now).ok
    gone = classify_status(410, {}, now)
    assert gone.disable and not gone.retryable
    assert classify_status(503, {}, now).retryable
    assert not classify_status(400, {}, now).retryable
    assert not classify_status(301, {}, now).ok  # 3xx is a failure (Standard Webhooks)
    assert classify_status(429, {"Retry-After": "7"}, now).retry_after == 7.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_registry_builds_every_type_and_names_what_each_requires(
        session: requests.Session) -> None:
    """Each action type loads its receiver class; the keys it cannot do without are what
    the config asks for (``required for type ...``)."""
    assert RECEIVERS.names() == ("webhook", "alertmanager", "pagerduty", "slack", "exec")
    required = {name: RECEIVERS.load(name).required for name in RECEIVERS}
    assert required == {"webhook": ("url",), "alertmanager": ("url",), "slack": ("url",),
                        "pagerduty": ("routing_key_env",), "exec": ("command",)}
    for name in RECEIVERS:
        assert isinstance(receiver(session, type=name), RECEIVERS.load(name))
    with pytest.raises(ValueError, match="unknown action type 'smoke-signal' \\(known: webhook"):
        receiver(session, type="smoke-signal")


def test_origin_redacts() -> None:
    assert origin("https://hooks.slack.com/services/T/B/X?token=1") == "https://hooks.slack.com"
    assert origin("http://user:pw@[::1]:8080/p") == "http://[::1]:8080"


# --- exec -------------------------------------------------------------------------------

SCRIPT = """
import json, os, sys
body = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith("GPUWARDEN_") or "SECRET" in k}
json.dump({"argv": sys.argv[1:], "env": env, "body": body}, open(sys.argv[1], "w"))
sys.exit(int(sys.argv[2]))
"""


def test_exec_argv_env_stdin(tmp_path: Path, session: requests.Session,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_OTHER_SECRET", "must-not-leak")
    out_file = tmp_path / "out.json"
    script = tmp_path / "hook.py"
    script.write_text(SCRIPT)
    rec = receiver(session, type="exec",
                   command=(sys.executable, str(script), str(out_file), "0"))
    a = make_alert("QualityDrift", model="llama-8b")
    d = delivery((a, "firing"), act="hook")
    d.alerts[0]["annotations"].update(current_model="llama-8b-v2", previous_model="llama-8b-v1")
    assert rec.send(d).ok
    seen = json.loads(out_file.read_text())
    assert seen["argv"] == [str(out_file), "0"]
    env = seen["env"]
    assert env["GPUWARDEN_ALERT_NAME"] == "QualityDrift"
    assert env["GPUWARDEN_ALERT_STATUS"] == "firing"
    assert env["GPUWARDEN_ALERT_FINGERPRINT"] == a.fingerprint
    assert env["GPUWARDEN_ALERT_SEVERITY"] == "warning"
    assert env["GPUWARDEN_ALERT_NODE"] == "n1" and env["GPUWARDEN_ALERT_SERVER"] == "vllm-0"
    assert env["GPUWARDEN_ALERT_MODEL"] == "llama-8b"
    assert env["GPUWARDEN_ALERT_CURRENT_MODEL"] == "llama-8b-v2"
    assert env["GPUWARDEN_ALERT_PREVIOUS_MODEL"] == "llama-8b-v1"
    assert json.loads(env["GPUWARDEN_ALERT_LABELS_JSON"])["model"] == "llama-8b"
    assert "GW_OTHER_SECRET" not in env  # the daemon's environment is not passed on
    assert seen["body"]["version"] == "4" and seen["body"]["alerts"][0]["status"] == "firing"


def test_exec_nonzero_is_retryable(tmp_path: Path, session: requests.Session) -> None:
    script = tmp_path / "hook.py"
    script.write_text(SCRIPT)
    rec = receiver(session, type="exec",
                   command=(sys.executable, str(script), str(tmp_path / "o.json"), "3"))
    out = rec.send(delivery((make_alert(), "firing")))
    assert not out.ok and out.retryable and out.error == "exit status 3"


def test_exec_timeout_kills_the_process_group(tmp_path: Path,
                                              session: requests.Session) -> None:
    pid_file = tmp_path / "child.pid"
    # The shell starts a grandchild that would outlive a plain kill of the shell.
    cmd = ("/bin/sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait")
    rec = receiver(session, type="exec", command=cmd, timeout=0.5)
    started = time.monotonic()
    out = rec.send(delivery((make_alert(), "firing")))
    assert time.monotonic() - started < 3
    assert not out.ok and out.retryable and "timed out" in (out.error or "")
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.02)
    assert not _alive(child)


def test_exec_missing_binary(session: requests.Session) -> None:
    out = receiver(session, type="exec", command=("/nonexistent/hook",)).send(
        delivery((make_alert(), "firing")))
    assert not out.ok and "cannot run" in (out.error or "")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
