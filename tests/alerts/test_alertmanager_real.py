"""End to end with the real Alertmanager (Debian package ``prometheus-alertmanager``).

gpuwarden posts to Alertmanager's ``/api/v2/alerts``; Alertmanager routes to a webhook
receiver that is our loopback recorder. The point is to prove that Alertmanager itself
accepts what we send (explicit ``endsAt``, labels, annotations), shows the alert as
active, notifies with its own webhook body, and notifies the resolve when we send the
resolved time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.promserver import free_port

from .conftest import Harness, Recorder, action, firing, make_alert, resolved

pytestmark = pytest.mark.alertmanager


def alertmanager_binary() -> str | None:
    for name in ("prometheus-alertmanager", "alertmanager"):
        found = shutil.which(name)
        if found:
            return found
    debian = Path("/usr/bin/prometheus-alertmanager")
    return str(debian) if debian.is_file() else None


class AlertmanagerProc:
    def __init__(self, tmp: Path, webhook_url: str) -> None:
        binary = alertmanager_binary()
        if binary is None:
            pytest.skip("Alertmanager not installed (apt-get install prometheus-alertmanager)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {  # JSON is YAML
            "route": {"receiver": "rec", "group_by": ["alertname"], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "rec", "webhook_configs": [
                {"url": webhook_url, "send_resolved": True}]}],
        }
        (tmp / "am.yml").write_text(json.dumps(config))
        (tmp / "am-data").mkdir()
        self.log = (tmp / "am.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'am.yml'}", f"--storage.path={tmp / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
             "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready(tmp)

    def _wait_ready(self, tmp: Path) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("alertmanager exited: " + (tmp / "am.log").read_text())
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("alertmanager did not become ready in 15 s")

    def alerts(self) -> list[dict[str, Any]]:
        resp = requests.get(self.url + "/api/v2/alerts", timeout=2)
        resp.raise_for_status()
        return list(resp.json())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def alertmanager(tmp_path: Path, recorder: Recorder) -> Iterator[AlertmanagerProc]:
    am = AlertmanagerProc(tmp_path, recorder.url + "/am-hook")
    yield am
    am.stop()


def test_firing_and_resolved_through_real_alertmanager(
        alertmanager: AlertmanagerProc, recorder: Recorder, harness: Harness) -> None:
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
