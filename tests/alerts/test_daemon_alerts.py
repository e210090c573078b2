"""The daemon's alerting, in-process with real HTTP: /api/v1/alerts, self-metrics,
delivery callbacks, and a restart that neither re-fires nor forgets."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import gpuwarden.alerts.engine as engine_mod
from gpuwarden.alerts.alert import AlertEvent
from gpuwarden.collector.base import Collector
from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.detectors import Detector, Finding, Window
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.model import Sample, make_labels
from tests.alerts.helpers import Threshold
from tests.daemon.test_daemon import free_port


class Temperatures(Collector):
    """GPU 0's temperature comes from a mutable value the test sets."""

    name = "temps"

    def __init__(self) -> None:
        self.value = 50.0

    def collect(self) -> Iterable[Sample]:
        labels = make_labels(node="n", gpu="0", uuid="GPU-0", model="H100")
        return [Sample("gpu_temperature_celsius", labels, self.value, time.time())]


class Nothing:
    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.inputs: dict[str, float] = {}

    def evaluate(self, window: Window) -> list[Finding]:
        return []


def factory(rule: RuleConfig) -> Detector:
    """Our stub threshold for the test's rule; default rules (if any) find nothing."""
    return Threshold(rule) if rule.name == "GPUHot" else Nothing(rule)


@pytest.fixture(autouse=True)
def stub_detectors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "build_detector", factory)


def make_config(tmp_path: Path) -> Any:
    return parse_config(
        f'node = "n"\ninterval = "100ms"\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
        '[[rules]]\nname = "GPUHot"\nsignal = "gpu_temperature_celsius"\nthreshold = 85\n'
        'for = "300ms"\nseverity = "critical"\n'
        '[rules.annotations]\nrunbook = "https://runbooks.example/gpu-hot"\n', "<test>")


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def metric(port: int, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    return {tuple(sorted(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name}


def api(port: int) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = requests.get(f"http://127.0.0.1:{port}/api/v1/alerts",
                                              timeout=2).json()
    return body


def test_alerts_api_metrics_delivery_and_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    temps = Temperatures()
    daemon = Daemon(config, collectors=[temps])
    got: list[AlertEvent] = []
    daemon.on_alert_events.append(got.extend)
    daemon.on_alert_events.insert(0, lambda events: 1 / 0)  # a broken receiver
    daemon.start()
    try:
        port = daemon.http_port
        assert api(port) == []
        temps.value = 91.0
        pending = wait_for(lambda: [a for a in api(port) if a["state"] == "pending"])
        assert pending[0]["name"] == "GPUHot"
        firing = wait_for(lambda: [a for a in api(port) if a["state"] == "firing"])
        alert = firing[0]
        assert alert["labels"] == {"alertname": "GPUHot", "severity": "critical", "node": "n",
                                   "gpu": "0", "uuid": "GPU-0", "model": "H100"}
        assert alert["annotations"]["runbook"] == "https://runbooks.example/gpu-hot"
        assert alert["annotations"]["summary"] and alert["value"] == 91.0
        assert alert["active_at"].endswith("Z") and alert["fired_at"] >= alert["active_at"]
        counts = metric(port, "gpuwarden_alerts")
        assert counts[(("alertname", "GPUHot"), ("state", "firing"))] == 1.0
        assert counts[(("alertname", "GPUHot"), ("state", "pending"))] == 0.0
        assert metric(port, "gpuwarden_rule_errors_total")[(("rule", "GPUHot"),)] == 0.0
        assert metric(port, "gpuwarden_rule_evaluation_seconds")[()] > 0
        assert metric(port, "gpuwarden_alert_delivery_errors_total")[()] >= 1
        assert [str(e.kind) for e in got] == ["firing"]  # the good receiver still got it
    finally:
        daemon.shutdown()

    # Restart over the same store: still firing, no second FIRING event.
    again = Daemon(make_config(tmp_path), collectors=[temps])
    got2: list[AlertEvent] = []
    again.on_alert_events.append(got2.extend)
    again.start()
    try:
        port = again.http_port
        assert [a["state"] for a in api(port)] == ["firing"]
        time.sleep(0.5)
        assert got2 == []
        temps.value = 40.0
        wait_for(lambda: api(port) == [])
        assert [str(e.kind) for e in got2] == ["resolved"]
        assert got2[0].alert.fingerprint == got[0].alert.fingerprint
    finally:
        again.shutdown()
