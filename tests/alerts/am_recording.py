"""Webhook bodies recorded from a real Alertmanager, and the alert they were recorded for.

``tests/fixtures/alertmanager/webhook-0.25.0-{firing,resolved}.json`` are the exact
bytes Alertmanager 0.25.0 (Debian package ``prometheus-alertmanager`` 0.25.0-1+b4,
built with Go 1.19.8) posted to a loopback webhook for :data:`ALERT`, pushed to it by
gpuwarden's ``alertmanager`` action: once firing, once resolved. The root route's
receiver is named :data:`RECEIVER` (regexp metacharacters in it), Alertmanager ran with
``--web.external-url`` :data:`EXTERNAL_URL` and ``group_by: [alertname]``.

The label and annotation values hold what JSON or Go's ``%q`` escape (``"``, ``\\``,
``<``, ``>``, ``&``, U+2028/U+2029, a tab, a backspace, U+0001, DEL, a no-break space)
and what they keep (``é``, a character outside the BMP); the alert fired at a time with
a fraction of a second and resolved on a whole second.

Record again (overwrites the fixtures; needs the binary) with
``.venv/bin/python -m tests.alerts.am_recording``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from gpuwarden.alerts.alert import Alert, AlertState
from gpuwarden.alerts.payload import alert_entry, delivery_id
from gpuwarden.alerts.receivers.base import Delivery, ReceiverContext
from gpuwarden.alerts.receivers.registry import build_receiver
from gpuwarden.model import make_labels
from tests.promserver import free_port

from .conftest import Recorder, action

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "alertmanager"
VERSION = "0.25.0"
RECEIVER = "ops.webhook-1 (gpu|node)"
EXTERNAL_URL = "http://alertmanager.example:9093"
GENERATOR = "http://gpu-node-01:9842/api/v1/alerts?rule=KV&node=n1"
ALERTNAME = 'Lat"ency\\p95 <q> & \u2028 é\t\x01\u00a0'
FIRED_AT = 1_700_000_000.1  # 2023-11-14T22:13:20.1Z
RESOLVED_AT = 1_700_000_060.0  # 2023-11-14T22:14:20Z
STATUSES = ("firing", "resolved")

_LABELS = make_labels({"detail": '<b>"quoted"</b> & C:\\path', "gpu": "0", "gpu0": "x",
                       "node": "n1", "zz": "\x01\x7f"}, alertname=ALERTNAME)
_ANNOTATIONS = {"summary": "p95 > 2 s & rising <fast>", "z": "\u2029\b\U0001f525"}
ALERT = Alert(name=ALERTNAME, labels=_LABELS, annotations=_ANNOTATIONS,
              state=AlertState.FIRING, value=2.4, active_at=FIRED_AT - 30, fired_at=FIRED_AT)
RESOLVED = Alert(name=ALERTNAME, labels=_LABELS, annotations=_ANNOTATIONS,
                 state=AlertState.RESOLVED, value=2.4, active_at=FIRED_AT - 30,
                 fired_at=FIRED_AT, resolved_at=RESOLVED_AT)


def fixture(status: str) -> Path:
    return FIXTURES / f"webhook-{VERSION}-{status}.json"


def delivery(status: str, act: str) -> Delivery:
    """The delivery gpuwarden makes of :data:`ALERT` (``status``) for the action ``act``."""
    alert = ALERT if status == "firing" else RESOLVED
    entry = alert_entry(alert, status, at=RESOLVED_AT, generator_url=GENERATOR)
    return Delivery(id=delivery_id(act, status, [entry]), action=act, status=status,
                    rule=ALERTNAME, alerts=(entry,), created=RESOLVED_AT,
                    group_labels=(("alertname", ALERTNAME),))


def alertmanager_binary() -> str | None:
    for name in ("prometheus-alertmanager", "alertmanager"):
        found = shutil.which(name)
        if found:
            return found
    debian = Path("/usr/bin/prometheus-alertmanager")
    return str(debian) if debian.is_file() else None


class Alertmanager:
    """One Alertmanager on loopback whose root route ``receiver`` notifies ``webhook_url``
    (group_wait 0 s, group_interval 1 s), stopped by PID; ``external_url`` None leaves
    Alertmanager's own default."""

    def __init__(self, binary: str, tmp: Path, webhook_url: str, *,
                 receiver: str = RECEIVER, external_url: str | None = EXTERNAL_URL) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {  # JSON is YAML
            "route": {"receiver": receiver, "group_by": ["alertname"], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": receiver, "webhook_configs": [
                {"url": webhook_url, "send_resolved": True}]}],
        }
        (tmp / "am.yml").write_text(json.dumps(config))
        (tmp / "am-data").mkdir()
        self.log_path = tmp / "am.log"
        self.log = self.log_path.open("wb")
        external = [f"--web.external-url={external_url}"] if external_url else []
        self.proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'am.yml'}", f"--storage.path={tmp / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", *external,
             "--cluster.listen-address=", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(15.0)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("alertmanager exited: " + self.log_path.read_text())
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"alertmanager did not become ready in {seconds:g} s")

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (``/api/v2/alerts``)."""
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


def capture(binary: str, tmp: Path) -> dict[str, bytes]:
    """The bodies Alertmanager posts for :data:`ALERT`, firing then resolved, when
    gpuwarden's ``alertmanager`` action pushes it (10 s at most for each)."""
    recorder = Recorder()
    session = requests.Session()
    am = Alertmanager(binary, tmp, recorder.url + "/hook")
    try:
        ctx = ReceiverContext(session=session, node="n1", external_url=EXTERNAL_URL)
        to_am = build_receiver(action("am", "alertmanager", url=am.url), ctx)
        bodies: dict[str, bytes] = {}
        for n, status in enumerate(STATUSES, start=1):
            if not to_am.send(delivery(status, "am")).ok:
                raise RuntimeError(f"Alertmanager refused the {status} alert")
            bodies[status] = recorder.wait(n, timeout=10)[n - 1].body
        return bodies
    finally:
        am.stop()
        session.close()
        recorder.close()


def record() -> None:
    binary = alertmanager_binary()
    if binary is None:
        sys.exit("no alertmanager binary (apt-get install prometheus-alertmanager)")
    with tempfile.TemporaryDirectory() as tmp:
        bodies = capture(binary, Path(tmp))
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for status, body in bodies.items():
        fixture(status).write_bytes(body)
        print(f"wrote {fixture(status)} ({len(body)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    record()
