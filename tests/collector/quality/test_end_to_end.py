"""End to end: a good model, a deploy of a bad checkpoint, QualityDrift, rollback hook.

A loopback OpenAI-compatible fake (which also serves vLLM ``/metrics``) answers the
canaries well under ``good-ckpt``; then it switches to ``bad-ckpt`` and answers with a
loop. The real daemon (scrape + canary collectors, SQLite store, rule engine with the
default rules) computes ``quality_similarity``; the default ``QualityDrift`` rule fires
and its ``checkpoint-rollback`` action -- a webhook to a loopback recorder -- receives
``previous_model = good-ckpt``. Delivery's ServedModels is fed the cycle's samples by
wrapping the scrape collector, which is what the daemon's own wiring does each cycle.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from gpuwarden.alerts.dispatch import Dispatcher
from gpuwarden.alerts.served_models import ServedModels
from gpuwarden.collector.base import Collector
from gpuwarden.collector.quality.canary import quality_collector
from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.daemon.wiring import build_collectors
from gpuwarden.model import Sample
from tests.collector.quality.fake_openai import FakeOpenAI
from tests.collector.quality.helpers import PROMPTS
from tests.daemon.test_daemon import free_port


class Recorder:
    """A webhook receiver on loopback that keeps every JSON body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                outer.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/rollback"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Observed(Collector):
    """Passes a collector's samples to the served models, as the daemon's wiring does."""

    def __init__(self, inner: Collector, models: ServedModels) -> None:
        self.inner, self.models, self.name = inner, models, inner.name

    def collect(self) -> Iterable[Sample]:
        samples = list(self.inner.collect())
        self.last_error = self.inner.last_error
        self.models.observe(samples)
        return samples

    def close(self) -> None:
        self.inner.close()


def wait_for(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_bad_checkpoint_fires_quality_drift_and_rollback_gets_previous_model(
        tmp_path: Path) -> None:
    canaries = tmp_path / "canaries.jsonl"
    canaries.write_text("".join(json.dumps({"prompt": p, "reference": r}) + "\n"
                                for p, r in PROMPTS.items()), encoding="utf-8")
    recorder = Recorder()
    with FakeOpenAI(PROMPTS, model="good-ckpt") as fake:
        config = parse_config(
            f'node = "n1"\ninterval = "100ms"\nlisten = "127.0.0.1:{free_port()}"\n'
            f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n[gpu]\nsource = "off"\n'
            f'[[servers]]\nname = "vllm-0"\nkind = "vllm"\nmetrics_url = "{fake.url}/metrics"\n'
            f'api_url = "{fake.url}"\n'
            f'[quality]\nevery = "1s"\ncanaries = "{canaries}"\ntimeout = "2s"\n'
            f'[[actions]]\nname = "checkpoint-rollback"\ntype = "webhook"\n'
            f'url = "{recorder.url}"\n', "<e2e>")
        session = requests.Session()
        models = ServedModels(None, node="n1")
        collectors: list[Collector] = [Observed(c, models)
                                       for c in build_collectors(config, lambda: session)]
        quality = quality_collector(config, session=requests.Session())
        assert quality is not None
        collectors.append(quality)
        daemon = Daemon(config, collectors=collectors)
        dispatcher = Dispatcher(config.actions, engine=None, session=session, node=config.node,
                                listen=config.listen, interval=config.interval,
                                served_models=models)
        dispatcher.start()
        daemon.on_alert_events.append(dispatcher.submit)
        daemon.start()
        try:
            store = daemon.store

            def similarity(model: str) -> list[float]:
                return [s.value for s in store.latest("quality_similarity", {"model": model})]

            assert wait_for(lambda: similarity("good-ckpt"), 10.0) == [1.0]
            assert models.current_model("vllm-0") == "good-ckpt"
            assert not daemon.alerts_json()

            fake.model = "bad-ckpt"  # the deploy: new name, broken answers
            fake.answer = lambda p: "the the the the the the the the the the the the the"
            bad = wait_for(lambda: similarity("bad-ckpt"), 15.0)
            assert bad[0] < 0.5
            firing = wait_for(lambda: [b for b in recorder.bodies if b["status"] == "firing"],
                              15.0)
            alert = firing[0]["alerts"][0]
            assert alert["labels"]["alertname"] == "QualityDrift"
            assert alert["labels"]["model"] == "bad-ckpt"
            assert alert["labels"]["server"] == "vllm-0"
            assert alert["annotations"]["previous_model"] == "good-ckpt"
            assert alert["annotations"]["current_model"] == "bad-ckpt"
            # Nothing of the canaries' text travelled with the alert.
            text = json.dumps(firing)
            assert not any(p in text or r in text for p, r in PROMPTS.items())
        finally:
            daemon.shutdown()
            dispatcher.stop(timeout=2.0)
            recorder.close()
