"""gpuwarden's webhook bytes against what the installed Alertmanager sends, live.

The alert of :mod:`tests.alerts.am_recording` (labels that JSON and Go's ``%q`` must
escape, a receiver name with regexp metacharacters, a start time with a fraction of a
second and an end on a whole second) is pushed by gpuwarden's ``alertmanager`` action to
a real Alertmanager on loopback, which notifies our recorder; gpuwarden's own ``webhook``
action, named like Alertmanager's receiver and given Alertmanager's external URL, must
produce the same bytes for the firing and for the resolved notice. The recorded bodies
(``tests/fixtures/alertmanager/``) are checked without the binary in test_payload_go.py.

Bounded: Alertmanager ready in 15 s, each notification within 10 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from gpuwarden.alerts.receivers.base import ReceiverContext
from gpuwarden.alerts.receivers.registry import build_receiver
from gpuwarden.alerts.receivers.webhook import WebhookReceiver

from .am_recording import EXTERNAL_URL, RECEIVER, STATUSES, alertmanager_binary, capture, delivery
from .conftest import action

pytestmark = pytest.mark.alertmanager


def test_webhook_bytes_equal_real_alertmanager(tmp_path: Path) -> None:
    binary = alertmanager_binary()
    if binary is None:
        pytest.skip("Alertmanager not installed (apt-get install prometheus-alertmanager)")
    theirs = capture(binary, tmp_path)
    with requests.Session() as session:
        ctx = ReceiverContext(session=session, node="n1", external_url=EXTERNAL_URL)
        ours = build_receiver(action(RECEIVER, "webhook", url="http://127.0.0.1:9/"), ctx)
    assert isinstance(ours, WebhookReceiver)
    for status in STATUSES:
        mine = ours.body(delivery(status, RECEIVER))
        assert json.loads(mine) == json.loads(theirs[status])  # the same content ...
        assert mine == theirs[status], (status, mine, theirs[status])  # ... and bytes
