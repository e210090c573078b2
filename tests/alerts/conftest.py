"""Helpers for the delivery tests: a real HTTP receiver on loopback, alerts, a dispatcher.

The :class:`Recorder` is a ``ThreadingHTTPServer`` on 127.0.0.1:0 that records every
request (path, headers, raw body, arrival time on its ``clock``, the status answered)
and answers from ``respond`` when set, else a script of responses (status, headers,
body, delay) and then a default. ``down()`` closes its port (connection refused) and
``up()`` opens the same port again: a receiver outage. :class:`FakeTime` is a clock and
backoff wait for the dispatcher, so retry windows of minutes pass in milliseconds. Tests
talk to it through the real
``requests`` stack, so timeouts, connection handling and headers are the real ones.

Fixture names (``recorder``, ``dstore``, ``harness``) are specific to the delivery
tests so they cannot shadow fixtures of other test modules in this package.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from gpuwarden.alerts.action import ActionConfig
from gpuwarden.alerts.alert import Alert, AlertEvent, AlertState, EventKind
from gpuwarden.alerts.audit import AuditRow
from gpuwarden.alerts.dispatch import Dispatcher
from gpuwarden.alerts.receivers.base import RetryPolicy
from gpuwarden.model import make_labels
from gpuwarden.storage import Store, open_store


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 0  # what the recorder answered

    def json(self) -> Any:
        return json.loads(self.body)


class Recorder:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.respond: Callable[[str], Reply] | None = None  # path -> reply
        self.clock: Callable[[], float] = time.monotonic
        self.cv = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                with recorder.cv:
                    if recorder.respond is not None:
                        reply = recorder.respond(self.path)
                    else:
                        reply = (recorder.script.popleft() if recorder.script
                                 else recorder.default)
                    recorder.requests.append(Request(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                        body, recorder.clock(), reply.status))
                    recorder.cv.notify_all()
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the client gave up (timeout tests)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self._handler = Handler
        self._serve(0)
        self.port = int(self.server.server_address[1])

    def _serve(self, port: int) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.is_up = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        """Close the port: connections are refused until :meth:`up`."""
        if self.is_up:
            self.close()
            self.is_up = False

    def up(self) -> None:
        if not self.is_up:
            self._serve(self.port)  # HTTPServer sets SO_REUSEADDR: the port is free again

    def delivered(self) -> list[Request]:
        """The requests the receiver accepted (2xx): what it knows."""
        with self.cv:
            return [r for r in self.requests if 200 <= r.status < 300]

    def wait(self, n: int, timeout: float = 5.0) -> list[Request]:
        end = time.monotonic() + timeout
        with self.cv:
            while len(self.requests) < n:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {n} requests, got {len(self.requests)}")
                self.cv.wait(left)
            return list(self.requests)

    def close(self) -> None:
        if self.is_up:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


@pytest.fixture
def dstore(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'alerts.db'}", node="n1")
    yield s
    s.close()


class FakeTime:
    """A dispatcher clock and backoff wait: a backoff moves the clock instead of sleeping.

    ``wait`` still releases the worker's condition for a moment so that deliveries
    put meanwhile (a superseding resolve) are seen, as with a real wait.
    """

    def __init__(self, start: float) -> None:
        self.now = start
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += max(0.0, seconds)

    def wait(self, cv: threading.Condition, seconds: float) -> None:
        self.advance(seconds)
        cv.wait(0.001)


FAST = RetryPolicy(attempts=3, base=0.01, factor=2.0, max_delay=0.05, max_retry_after=2.0)


class Harness:
    """Builds dispatchers on the test's store and stops them all in teardown."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.session = requests.Session()
        self.dispatchers: list[Dispatcher] = []
        self.stop_timeout = 2.0

    def __call__(self, *actions: ActionConfig, **kw: Any) -> Dispatcher:
        kw.setdefault("retry", FAST)
        if "clock" in kw:  # a FakeTime wakes nobody when moved: the router looks often
            kw.setdefault("poll", 0.02)
        kw.setdefault("session", self.session)
        d = Dispatcher(list(actions), engine=self.store.engine, node="n1",
                       listen="127.0.0.1:9842", **kw)
        d.start()
        self.dispatchers.append(d)
        return d

    def audit(self, **kw: Any) -> list[AuditRow]:
        assert self.dispatchers[0].audit is not None
        return self.dispatchers[0].audit.query(**kw)

    def results(self, action: str | None = None) -> list[tuple[str, str]]:
        return [(r.result, r.reason or "") for r in self.audit(action=action)]

    def close(self) -> None:
        for d in self.dispatchers:
            d.stop(self.stop_timeout)
        self.session.close()


@pytest.fixture
def harness(dstore: Store) -> Iterator[Harness]:
    h = Harness(dstore)
    yield h
    h.close()


def action(name: str = "hook", type: str = "webhook", **kw: Any) -> ActionConfig:
    return ActionConfig(name=name, type=type, **kw)


def make_alert(name: str = "KVCacheNearFull", *, actions: tuple[str, ...] = ("hook",),
               fired_at: float = 1_700_000_000.0, severity: str = "warning",
               summary: str = "KV cache 95% full", **labels: str) -> Alert:
    labels.setdefault("node", "n1")
    labels.setdefault("server", "vllm-0")
    return Alert(name=name, labels=make_labels(labels, alertname=name, severity=severity),
                 annotations={"summary": summary}, state=AlertState.FIRING, value=0.95,
                 active_at=fired_at - 30, fired_at=fired_at, actions=actions)


def firing(alert: Alert) -> AlertEvent:
    assert alert.fired_at is not None
    return AlertEvent(EventKind.FIRING, alert, alert.fired_at)


def resolved(alert: Alert, at: float | None = None) -> AlertEvent:
    at = (alert.fired_at or 0.0) + 60 if at is None else at
    done = Alert(name=alert.name, labels=alert.labels, annotations=alert.annotations,
                 state=AlertState.RESOLVED, value=alert.value, active_at=alert.active_at,
                 fired_at=alert.fired_at, resolved_at=at, actions=alert.actions)
    return AlertEvent(EventKind.RESOLVED, done, at)
