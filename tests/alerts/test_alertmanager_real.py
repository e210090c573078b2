"""End to end with the real Alertmanager (Debian package ``prometheus-alertmanager``).

gpuwarden posts to Alertmanager's ``/api/v2/alerts``; Alertmanager routes to a webhook
receiver that is our loopback recorder. The point is to prove that Alertmanager itself
accepts what we send (explicit ``endsAt``, labels, annotations), shows the alert as
active, notifies with its own webhook body, and notifies the resolve when we send the
resolved time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .am_recording import Alertmanager, alertmanager_binary
from .conftest import Harness, Recorder, action, firing, make_alert, resolved

pytestmark = pytest.mark.alertmanager


@pytest.fixture
def alertmanager(tmp_path: Path, recorder: Recorder) -> Iterator[Alertmanager]:
    binary = alertmanager_binary()
    if binary is None:
        pytest.skip("Alertmanager not installed (apt-get install prometheus-alertmanager)")
    am = Alertmanager(binary, tmp_path, recorder.url + "/am-hook", receiver="rec",
                      external_url=None)
    yield am
    am.stop()


def test_firing_and_resolved_through_real_alertmanager(
        alertmanager: Alertmanager, recorder: Recorder, harness: Harness) -> None:
    d = harness(action("am", "alertmanager", url=alertmanager.url))
    now = time.time()
    a = make_alert(actions=("am",), fired_at=now - 5)
    d.submit([firing(a)])

    deadline = time.monotonic() + 8
    active: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not active:
        active = alertmanager.alerts()
        time.sleep(0.05)
    (got,) = active
    assert got["labels"] == dict(a.labels)
    assert got["status"]["state"] == "active"
    assert got["fingerprint"] == a.fingerprint  # Alertmanager agrees on the fingerprint
    assert got["annotations"] == {"summary": "KV cache 95% full"}

    (note,) = recorder.wait(1, timeout=8)
    body = note.json()
    assert note.path == "/am-hook"
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "rec"
    assert body["alerts"][0]["fingerprint"] == a.fingerprint
    assert body["groupLabels"] == {"alertname": "KVCacheNearFull"}

    d.submit([resolved(a, time.time())])
    reqs = recorder.wait(2, timeout=8)
    done = reqs[1].json()
    assert done["status"] == "resolved"
    assert done["alerts"][0]["status"] == "resolved"
    assert done["alerts"][0]["fingerprint"] == a.fingerprint
    assert [x for x in alertmanager.alerts() if x["status"]["state"] == "active"] == []
    assert [r.result for r in harness.audit()] == ["sent", "sent"]
