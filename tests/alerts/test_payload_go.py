"""The webhook body is Alertmanager's, byte for byte: against bodies recorded from
Alertmanager 0.25.0 (tests/fixtures/alertmanager/, see tests/alerts/am_recording.py)
and point by point (field order, escaping, times, groupKey, receiver, the final newline),
the way a user diffing the two would check it."""

from __future__ import annotations

import ast
import base64
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gpuwarden.alerts import gojson
from gpuwarden.alerts.alert import Alert, AlertState
from gpuwarden.alerts.payload import (
    ZERO_TIME,
    alert_entry,
    group_key,
    webhook_body,
    webhook_bytes,
)
from gpuwarden.alerts.receivers.base import Receiver, ReceiverContext
from gpuwarden.alerts.receivers.exec import ExecReceiver
from gpuwarden.alerts.receivers.registry import build_receiver
from gpuwarden.alerts.receivers.webhook import WebhookReceiver
from gpuwarden.model import make_labels

from .am_recording import EXTERNAL_URL, RECEIVER, STATUSES, delivery, fixture
from .conftest import Recorder, action

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
# No surrogates: label values are text (UTF-8 on the wire).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def receiver(session: requests.Session, name: str = RECEIVER, **kw: Any) -> Receiver:
    ctx = ReceiverContext(session=session, node="n1", external_url=EXTERNAL_URL)
    return build_receiver(action(name, **kw), ctx)


def body_for(alert: Alert, status: str = "firing", name: str = "hook") -> bytes:
    entry = alert_entry(alert, status, at=alert.resolved_at or 0.0,
                        generator_url="http://n1:9842/api/v1/alerts")
    return webhook_bytes(webhook_body(name, [entry], group_labels={"alertname": alert.name},
                                      external_url="http://n1:9842"))


def alert(name: str = "KVCacheNearFull", *, fired_at: float = 1_700_000_000.0,
          resolved_at: float | None = None, **labels: str) -> Alert:
    return Alert(name=name, labels=make_labels(labels, alertname=name),
                 annotations={"summary": "KV cache 95% full"},
                 state=AlertState.FIRING if resolved_at is None else AlertState.RESOLVED,
                 value=0.95, active_at=fired_at - 30, fired_at=fired_at,
                 resolved_at=resolved_at)


def pairs(body: bytes) -> list[tuple[str, Any]]:
    """The top-level keys and values in the order they are written."""
    result: list[tuple[str, Any]] = json.loads(body, object_pairs_hook=list)
    return result


@pytest.mark.parametrize("status", STATUSES)
def test_same_bytes_as_recorded_alertmanager(status: str, session: requests.Session) -> None:
    rec = receiver(session, type="webhook", url="http://127.0.0.1:9/")
    assert isinstance(rec, WebhookReceiver)
    recorded = fixture(status).read_bytes()
    mine = rec.body(delivery(status, RECEIVER))
    assert json.loads(mine) == json.loads(recorded)
    assert mine == recorded


def test_fields_in_go_struct_order_and_maps_sorted() -> None:
    body = body_for(alert(zone="b", gpu="0", a1="x", a="y"))
    assert [k for k, _ in pairs(body)] == [
        "receiver", "status", "alerts", "groupLabels", "commonLabels",
        "commonAnnotations", "externalURL", "version", "groupKey", "truncatedAlerts"]
    (first,) = dict(pairs(body))["alerts"]
    assert [k for k, _ in first] == ["status", "labels", "annotations", "startsAt",
                                     "endsAt", "generatorURL", "fingerprint"]
    labels = dict(first)["labels"]
    assert [k for k, _ in labels] == ["a", "a1", "alertname", "gpu", "zone"]


def test_ends_with_the_newline_of_json_encoder() -> None:
    body = body_for(alert())
    assert body.endswith(b'"truncatedAlerts":0}\n') and body.count(b"\n") == 1


def test_html_characters_and_line_separators_escaped_as_go_does() -> None:
    body = body_for(alert(detail="<b> & </b>", note="a\u2028b\u2029c", other="é\t\x01\b"))
    assert b'"detail":"\\u003cb\\u003e \\u0026 \\u003c/b\\u003e"' in body
    assert b'"note":"a\\u2028b\\u2029c"' in body
    assert '"other":"é\\t\\u0001\\u0008"'.encode() in body  # non-ASCII text stays raw
    assert b"<" not in body and b">" not in body and b"&" not in body


@pytest.mark.parametrize(("fired_at", "starts"), [
    (1_700_000_000.0, "2023-11-14T22:13:20Z"),
    (1_700_000_000.1, "2023-11-14T22:13:20.1Z"),
    (1_700_000_000.12, "2023-11-14T22:13:20.12Z"),
    (1_700_000_000.123, "2023-11-14T22:13:20.123Z"),
])
def test_times_without_trailing_zeros(fired_at: float, starts: str) -> None:
    (firing,) = json.loads(body_for(alert(fired_at=fired_at)))["alerts"]
    assert firing["startsAt"] == starts and firing["endsAt"] == ZERO_TIME
    done = alert(fired_at=fired_at, resolved_at=1_700_000_060.5)
    (resolved,) = json.loads(body_for(done, "resolved"))["alerts"]
    assert resolved["startsAt"] == starts and resolved["endsAt"] == "2023-11-14T22:14:20.5Z"


def test_group_key_quotes_label_values_like_go() -> None:
    assert group_key({"alertname": 'Lat"ency\\p95'}) == '{}:{alertname="Lat\\"ency\\\\p95"}'
    body = json.loads(body_for(alert('Lat"ency\\p95')))
    assert body["groupKey"] == '{}:{alertname="Lat\\"ency\\\\p95"}'
    assert group_key({"b": "2", "a": "1\n"}) == '{}:{a="1\\n", b="2"}'


def test_receiver_regexp_quoted_as_alertmanager_template_data() -> None:
    assert json.loads(body_for(alert(), name="ops.webhook"))["receiver"] == "ops\\.webhook"
    # regexp.QuoteMeta leaves - & ~ # and spaces alone (Python's re.escape does not).
    assert gojson.quote_meta("a-b c&d~#e") == "a-b c&d~#e"
    assert gojson.quote_meta("^(a|b)*+?.[x]{1}$\\") == (
        "\\^\\(a\\|b\\)\\*\\+\\?\\.\\[x\\]\\{1\\}\\$\\\\")
    assert re.fullmatch(gojson.quote_meta("ops.webhook(1)"), "ops.webhook(1)")


def test_signature_covers_the_exact_bytes_sent(recorder: Recorder, session: requests.Session,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_SECRET", SECRET)
    rec = receiver(session, type="webhook", url=recorder.url, secret_env="GW_TEST_SECRET")
    assert isinstance(rec, WebhookReceiver)
    d = delivery("firing", RECEIVER)
    assert rec.send(d).ok
    (req,) = recorder.wait(1)
    assert req.body == rec.body(d) == fixture("firing").read_bytes()
    assert Webhook(SECRET).verify(req.body, req.headers) == json.loads(req.body)
    with pytest.raises(WebhookVerificationError):  # the bytes without Go's newline do not verify
        Webhook(SECRET).verify(req.body.rstrip(b"\n"), req.headers)


def test_exec_stdin_is_the_same_body(tmp_path: Path, session: requests.Session) -> None:
    rec = receiver(session, type="exec", command=(sys.executable, "-c", "pass"))
    assert isinstance(rec, ExecReceiver)
    assert rec.stdin(delivery("resolved", RECEIVER)) == fixture("resolved").read_bytes()


@given(TEXT)
def test_json_string_reads_back_and_hides_html(text: str) -> None:
    written = gojson.json_string(text)
    assert json.loads(written) == text
    assert not set(written) & set("<>&\u2028\u2029")
    assert all(ord(c) >= 0x20 for c in written)


@given(TEXT)
def test_quote_reads_back_and_shows_only_printable(text: str) -> None:
    quoted = gojson.quote(text)
    assert ast.literal_eval(quoted) == text  # Go's escapes are a subset of Python's
    assert all(c.isprintable() for c in quoted)


def test_quote_matches_go_strconv_examples() -> None:
    # strconv.Quote's documented behaviour: printable runes raw, the rest escaped, \x for
    # ASCII controls and DEL, \u below U+10000, \U above.
    assert gojson.quote("☺\t\a\v\x01\x7f") == '"☺\\t\\a\\v\\x01\\x7f"'
    assert (gojson.quote("\u00a0\u2028\U000e0001\U0001f525")
            == '"\\u00a0\\u2028\\U000e0001\U0001f525"')
