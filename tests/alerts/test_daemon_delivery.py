"""The daemon as wired for users: a rule fires, the configured webhook receives the
Alertmanager body (signed), the audit trail and /metrics say so, the resolve follows."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from pathlib import Path

import requests
from sqlalchemy import select

from gpuwarden.collector.sim import SimulatedGpuCollector
from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.storage import schema
from tests.alerts.conftest import Recorder
from tests.daemon.test_daemon import free_port

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_rule_fires_and_resolves_through_the_configured_webhook(
        tmp_path: Path, recorder: Recorder) -> None:
    os.environ["GW_TEST_HOOK_SECRET"] = SECRET
    config = parse_config(
        f'node = "n1"\ninterval = "200ms"\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
        '[[rules]]\nname = "GPULost"\nsignal = "gpu_up"\nop = "=="\nthreshold = 0\n'
        'severity = "critical"\nactions = ["oncall"]\n'
        '[[actions]]\nname = "oncall"\ntype = "webhook"\n'
        f'url = "{recorder.url}/hook"\nsecret_env = "GW_TEST_HOOK_SECRET"\n', "<test>")
    gpus = SimulatedGpuCollector("n1", 2, seed=1)
    daemon = Daemon(config, collectors=[gpus])
    daemon.start()
    try:
        time.sleep(0.5)
        assert recorder.requests == []  # healthy GPUs: nothing sent
        gpus.set_lost(1)
        (firing,) = recorder.wait(1, timeout=5)
        body = firing.json()
        assert body["version"] == "4" and body["status"] == "firing"
        assert body["receiver"] == "oncall"
        (alert,) = body["alerts"]
        assert alert["labels"]["alertname"] == "GPULost" and alert["labels"]["gpu"] == "1"
        # Standard Webhooks signature over "id.timestamp.body"
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        signed = f"{firing.headers['webhook-id']}.{firing.headers['webhook-timestamp']}."
        expected = base64.b64encode(hmac.new(key, signed.encode() + firing.body,
                                             hashlib.sha256).digest()).decode()
        assert f"v1,{expected}" in firing.headers["webhook-signature"].split()

        gpus.set_lost(1, False)
        resolved = recorder.wait(2, timeout=5)[1].json()
        assert resolved["status"] == "resolved"
        assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]

        time.sleep(0.3)
        text = requests.get(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=2).text
        assert 'gpuwarden_actions_total{action="oncall",result="sent"} 2.0' in text
        with daemon.store.engine.connect() as conn:
            rows = conn.execute(select(schema.audit.c.action, schema.audit.c.result)).all()
        assert rows.count(("oncall", "sent")) == 2
        assert SECRET not in str(rows)
    finally:
        daemon.shutdown()
        del os.environ["GW_TEST_HOOK_SECRET"]
