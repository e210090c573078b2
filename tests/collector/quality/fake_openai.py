"""A loopback OpenAI-compatible server for canary tests (completions and chat).

It also serves ``/metrics`` in vLLM's vocabulary (the demo's simulated engine) with
``model_name`` set to the current model, so the scrape collector and the model
history see a deploy exactly as they would on a real vLLM.

It answers each prompt through ``answer(prompt) -> text`` under ``model``, both of
which a test may swap at any time (a deploy of a bad checkpoint), and records what it
was asked (request bodies, the most requests in flight at once) for assertions.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gpuwarden.tools.demo import SimulatedVllmState


class FakeOpenAI:
    def __init__(self, answers: dict[str, str], model: str = "good-model") -> None:
        self.model = model
        self.answers = dict(answers)
        self.answer: Callable[[str], str] = lambda p: self.answers.get(p, "I do not know.")
        self.delay = 0.0
        self.status = 200
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.metrics = SimulatedVllmState(model=model, rng=random.Random(0))
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/metrics":  # vLLM's vocabulary, with the current model
                    outer.metrics.model = outer.model
                    data = outer.metrics.render()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif self.path == "/v1/models":
                    self._send(200, {"object": "list",
                                     "data": [{"id": outer.model, "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer._lock:
                    outer.requests.append({"path": self.path, **body})
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    if outer.delay:
                        time.sleep(outer.delay)
                    if outer.status != 200:
                        self._send(outer.status, {"error": "injected"})
                    elif self.path == "/v1/completions":
                        text = outer.answer(body["prompt"])
                        self._send(200, {"object": "text_completion", "model": outer.model,
                                         "choices": [{"index": 0, "text": text}]})
                    elif self.path == "/v1/chat/completions":
                        text = outer.answer(body["messages"][-1]["content"])
                        self._send(200, {"object": "chat.completion", "model": outer.model,
                                         "choices": [{"index": 0, "message": {
                                             "role": "assistant", "content": text}}]})
                    else:
                        self._send(404, {"error": "not found"})
                finally:
                    with outer._lock:
                        outer.in_flight -= 1

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
