"""The HTTP endpoints: ``/metrics``, ``/healthz`` and ``/api/v1/*``.

A stdlib ``ThreadingHTTPServer``: the handlers only copy cached bytes or serialise a
small list, so a framework would add start-up time and memory for nothing. It binds
to loopback unless the config says otherwise; nothing here writes state except the
routes later issues add behind a token.

The accept loop sleeps until a connection or ``shutdown``: socketserver's
``serve_forever`` wakes every ``poll_interval`` only to see whether ``shutdown`` was
called (its own source says so), which costs an idle daemon CPU all day; here
``shutdown`` wakes the loop through a socketpair instead.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Protocol

from gpuwarden.api.exposition import CONTENT_TYPE
from gpuwarden.wakeup import WakeupPair

if TYPE_CHECKING:
    from gpuwarden.api.quality_push import Headers

log = logging.getLogger(__name__)


class DaemonView(Protocol):
    """What the HTTP layer needs from the daemon (kept narrow for tests); this package
    sits below the daemon and never imports it."""

    def metrics_body(self, client: str = "") -> bytes: ...

    def health(self) -> tuple[bool, dict[str, object]]: ...

    def alerts_json(self) -> list[dict[str, object]]: ...

    def budget_json(self) -> tuple[int, dict[str, object]]: ...

    def push_quality(self, body: bytes, headers: Headers) -> tuple[int, dict[str, object]]: ...


Route = Callable[["_Handler"], None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Buffer headers and body into one write (flushed by the base class after each
    # request) and disable Nagle: otherwise keep-alive scrapes stall ~40 ms on the
    # delayed-ACK / Nagle interaction.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._dispatch(self.server.get_routes, "GET")

    def do_POST(self) -> None:
        self._dispatch(self.server.post_routes, "POST")

    def _dispatch(self, routes: dict[str, Route], method: str) -> None:
        path = self.path.split("?", 1)[0]
        route = routes.get(path)
        if route is None:
            self.send_json(404, {"error": f"no such endpoint: {path}"})
            return
        try:
            route(self)
        except Exception:  # one bad request must never take the server down
            log.exception("error serving %s %s", method, path)
            self.send_json(500, {"error": "internal error"})

    def read_body(self, limit: int) -> bytes | None:
        """The request body, or None (413 sent) when it is over ``limit`` bytes."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > limit:
            self.close_connection = True  # the unread body must not be parsed as a request
            self.send_json(413, {"error": f"body must be 0..{limit} bytes"})
            return None
        return self.rfile.read(length)

    def send_body(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, payload: object) -> None:
        self.send_body(status, json.dumps(payload).encode(), "application/json")

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s " + format, self.client_address[0], *args)


def _metrics(handler: _Handler) -> None:
    handler.send_body(200, handler.server.view.metrics_body(handler.client_address[0]),
                      CONTENT_TYPE)


def _healthz(handler: _Handler) -> None:
    ok, detail = handler.server.view.health()
    handler.send_json(200 if ok else 503, {"status": "ok" if ok else "unhealthy", **detail})


def _alerts(handler: _Handler) -> None:
    handler.send_json(200, handler.server.view.alerts_json())


def _budget(handler: _Handler) -> None:
    status, payload = handler.server.view.budget_json()
    handler.send_json(status, payload)


def _quality(handler: _Handler) -> None:
    from gpuwarden.api.quality_push import MAX_BODY_BYTES

    body = handler.read_body(MAX_BODY_BYTES)
    if body is None:
        return
    status, payload = handler.server.view.push_quality(body, handler.headers)
    handler.send_json(status, payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], view: DaemonView) -> None:
        self.view = view
        self.get_routes: dict[str, Route] = {
            "/metrics": _metrics,
            "/healthz": _healthz,
            "/api/v1/alerts": _alerts,
            "/api/v1/budget": _budget,
        }
        self.post_routes: dict[str, Route] = {"/api/v1/quality": _quality}
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # serve_forever's wake-up: shutdown() wakes it, the loop's select sees it.
        # Made first: a bind that fails calls server_close from the base __init__.
        self._wake = WakeupPair()
        self._stop_requested = False
        self._stopped = threading.Event()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind, without ``HTTPServer``'s reverse DNS lookup of the listen address
        (``socket.getfqdn``, for a ``server_name`` nothing here reads): a node whose
        resolver is slow or away would wait for it before serving its first scrape, and
        the lookup loads the IDNA codec and unicodedata (~0.8 MiB) for good."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """socketserver's loop without its poll (module doc): handle connections until
        ``shutdown``; ``poll_interval`` is accepted for the signature and ignored."""
        self._stopped.clear()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake.reader, selectors.EVENT_READ)
                while not self._stop_requested:
                    ready = [key.fileobj for key, _ in selector.select()]
                    if self._stop_requested:
                        break
                    if self._wake.reader in ready:
                        self._wake.drain()
                    if self in ready:
                        self._accept_one()
                    self.service_actions()
        finally:
            self._wake.drain()  # a later serve_forever must not see this stop's wake-up
            self._stop_requested = False
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever and wait until it has returned; as socketserver's, call it
        from another thread while serve_forever runs (or it waits for one to run)."""
        self._stop_requested = True
        self._wake.wake()
        self._stopped.wait()

    def _accept_one(self) -> None:
        """Accept the connection the select saw and hand it to a thread (socketserver's
        handle_request without its select, through its documented methods)."""
        try:
            request, client_address = self.get_request()
        except OSError:  # gone again before accept (reset): nothing to serve
            return
        if not self.verify_request(request, client_address):
            self.shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def server_close(self) -> None:
        super().server_close()
        self._wake.close()


class HttpServer:
    """Runs the endpoints on a background thread; ``port`` is the bound port (0 → real)."""

    def __init__(self, host: str, port: int, view: DaemonView) -> None:
        self._server = _Server((host, port), view)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="gpuwarden-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        started = self._thread.ident is not None
        if started:  # shutdown() waits for serve_forever, which runs once started
            self._server.shutdown()
        self._server.server_close()
        if started:
            self._thread.join(timeout=5)
