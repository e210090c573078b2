"""Receivers: turn one :class:`Delivery` into one call to the outside world.

A receiver makes exactly one attempt and reports an :class:`Outcome`. Retries and
backoff are the :class:`DeliveryWorker`'s (one thread per action), which reports every
attempt to the dispatcher (``alerts/actions.py``) for the audit trail and dead letters,
so every receiver gets the same guard rails. The classification of results follows
Alertmanager and Standard Webhooks: 2xx is success; timeouts, connection errors, 429
and 5xx are retried (429 honouring ``Retry-After``); 410 Gone disables the endpoint;
every other status is a permanent failure.

Error texts in an :class:`Outcome` never quote a URL path, a header or an exception's
own message (``requests`` puts the full URL, e.g. a Slack webhook token, into it):
only the exception class and the endpoint's origin.
"""

from __future__ import annotations

import abc
import email.utils
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gpuwarden.alerts.payload import AlertEntry, origin

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import requests

    from gpuwarden.config import ActionConfig


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notification for one action: alerts of one rule sharing one status.

    ``id`` is computed once (``payload.delivery_id``) and reused by every attempt and by
    a replay, so it can serve as the ``webhook-id`` idempotency key.
    """

    id: str
    action: str
    status: str  # "firing" | "resolved"
    rule: str
    alerts: tuple[AlertEntry, ...]
    created: float
    group_labels: tuple[tuple[str, str], ...] = ()
    resend: bool = False  # an Alertmanager refresh: one attempt, no dead letter

    def to_json(self) -> str:
        """The dead-letter form (no secrets: signatures and keys are added at send time)."""
        return json.dumps({
            "id": self.id, "action": self.action, "status": self.status, "rule": self.rule,
            "alerts": list(self.alerts), "created": self.created,
            "group_labels": dict(self.group_labels),
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Delivery:
        d = json.loads(text)
        return cls(
            id=str(d["id"]), action=str(d["action"]), status=str(d["status"]),
            rule=str(d.get("rule", "")), alerts=tuple(d["alerts"]),
            created=float(d.get("created", 0.0)),
            group_labels=tuple(sorted(dict(d.get("group_labels", {})).items())),
        )

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(str(a["fingerprint"]) for a in self.alerts)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt."""

    ok: bool
    http_status: int | None = None
    retryable: bool = False
    retry_after: float | None = None
    disable: bool = False  # 410 Gone: the endpoint asked never to be called again
    error: str | None = None  # redacted: never a URL path, header or secret


SUCCESS = Outcome(ok=True)


@dataclass(frozen=True, slots=True)
class ReceiverContext:
    """What receivers need besides their action: the shared session and where we are."""

    session: requests.Session
    node: str
    external_url: str  # e.g. http://gpu-node-01:9842
    interval: float = 1.0  # the daemon's evaluation interval
    am_resend: float = 60.0  # Alertmanager resend period (Prometheus' resend-delay)
    clock: Any = time.time


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Jittered exponential backoff (cenkalti/backoff style, +-50 %), capped.

    ``attempts`` counts the first try. A ``Retry-After`` from the server replaces the
    computed delay but is capped at ``max_retry_after`` so a hostile or confused
    endpoint cannot park a worker for hours.
    """

    attempts: int = 5
    base: float = 0.5
    factor: float = 2.0
    max_delay: float = 60.0
    max_retry_after: float = 300.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        d = min(self.max_delay, self.base * self.factor ** max(0, attempt - 1))
        return min(self.max_delay, d * self.rng.uniform(0.5, 1.5))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as delta-seconds or an HTTP date; None when absent or garbage."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def classify_status(status: int, headers: Mapping[str, str], now: float) -> Outcome:
    if 200 <= status < 300:
        return Outcome(ok=True, http_status=status)
    if status == 410:
        return Outcome(ok=False, http_status=status, disable=True, error="HTTP 410 Gone")
    if status == 429:
        return Outcome(ok=False, http_status=status, retryable=True,
                       retry_after=parse_retry_after(headers.get("Retry-After"), now),
                       error="HTTP 429 Too Many Requests")
    if status >= 500:
        return Outcome(ok=False, http_status=status, retryable=True,
                       retry_after=parse_retry_after(headers.get("Retry-After"), now),
                       error=f"HTTP {status}")
    return Outcome(ok=False, http_status=status, error=f"HTTP {status} (not retried)")


class ReceiverError(Exception):
    """A receiver cannot build its request (missing secret, bad config); not retried."""


class Receiver(abc.ABC):
    """One configured action's way of delivering; one attempt per :meth:`send`."""

    #: Whether several alerts of one rule may share one call (webhook, Slack,
    #: Alertmanager); PagerDuty and exec are per alert (dedup key, one process each).
    groups = True

    def __init__(self, action: ActionConfig, ctx: ReceiverContext) -> None:
        self.action = action
        self.ctx = ctx

    @abc.abstractmethod
    def send(self, delivery: Delivery) -> Outcome:
        """Make one attempt; never raise for delivery problems (return an Outcome)."""

    @abc.abstractmethod
    def describe(self, delivery: Delivery) -> dict[str, Any]:
        """What :meth:`send` would do, for dry-run audit rows: no secrets in it."""

    def endpoint(self) -> str:
        return origin(self.action.url)


class HttpReceiver(Receiver):
    """A receiver that POSTs one JSON body per delivery through the shared session."""

    def build(self, delivery: Delivery) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the request (headers may hold secrets)."""
        raise NotImplementedError

    def url_for(self, delivery: Delivery) -> str:
        assert self.action.url is not None
        return self.action.url

    def base_headers(self) -> dict[str, str]:
        import os

        headers = {"Content-Type": "application/json"}
        headers.update(dict(self.action.headers))
        if self.action.bearer_token_env:
            token = os.environ.get(self.action.bearer_token_env)
            if not token:
                raise ReceiverError(
                    f"environment variable {self.action.bearer_token_env} is not set")
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def send(self, delivery: Delivery) -> Outcome:
        import requests

        try:
            body, headers = self.build(delivery)
        except (ReceiverError, ValueError) as exc:
            return Outcome(ok=False, error=f"cannot build request: {exc}")
        url = self.url_for(delivery)
        try:
            resp = self.ctx.session.post(url, data=body, headers=headers,
                                         timeout=self.action.timeout, allow_redirects=False)
        except requests.Timeout:
            return Outcome(ok=False, retryable=True,
                           error=f"timeout after {self.action.timeout:g}s ({origin(url)})")
        except requests.ConnectionError as exc:
            return Outcome(ok=False, retryable=True,
                           error=f"{type(exc).__name__} ({origin(url)})")
        except requests.RequestException as exc:
            return Outcome(ok=False, error=f"{type(exc).__name__} ({origin(url)})")
        try:
            return self.check(classify_status(resp.status_code, resp.headers, self.ctx.clock()),
                              resp)
        finally:
            resp.close()

    def check(self, outcome: Outcome, resp: requests.Response) -> Outcome:
        """Receiver-specific refinement of the classification (default: as is)."""
        return outcome

    def describe(self, delivery: Delivery) -> dict[str, Any]:
        try:
            body, headers = self.build(delivery)
        except (ReceiverError, ValueError) as exc:
            return {"error": str(exc)}
        return {"method": "POST", "endpoint": origin(self.url_for(delivery)),
                "headers": sorted(headers), "bytes": len(body)}


class WorkerHost(Protocol):
    """What a :class:`DeliveryWorker` reports to (the dispatcher)."""

    retry: RetryPolicy
    workers_exit: threading.Event

    def is_disabled(self, name: str) -> bool: ...
    def count(self, action: str, result: str, n: int = 1) -> None: ...
    def record_delivery(self, action: str, d: Delivery, result: str, *,
                        http_status: int | None = None, attempt: int | None = None,
                        reason: str | None = None,
                        detail: Mapping[str, Any] | None = None) -> None: ...
    def dead_letter(self, action: ActionConfig, d: Delivery, attempts: int,
                    error: str | None) -> None: ...
    def disable(self, action: ActionConfig, error: str | None) -> None: ...
    def delivered(self, action: ActionConfig, d: Delivery) -> None: ...
    def past_deadline(self) -> bool: ...
    def backoff(self, seconds: float) -> bool: ...


class DeliveryWorker:
    """One action's delivery thread and queue: attempts, backoff, the final verdict.

    Decisions about *whether* to deliver live in the dispatcher (its ``host``); this
    only drives the receiver and reports every attempt back through the host.
    """

    def __init__(self, host: WorkerHost, action: ActionConfig, receiver: Receiver) -> None:
        self.host = host
        self.action = action
        self.receiver = receiver
        self.queue: deque[Delivery] = deque()
        self.cv = threading.Condition()
        self.busy = False
        self.thread = threading.Thread(target=self.run, name=f"gpuwarden-action-{action.name}",
                                       daemon=True)
        self._last_resend_log = 0.0

    def put(self, delivery: Delivery) -> None:
        with self.cv:
            self.queue.append(delivery)
            self.cv.notify()

    def run(self) -> None:
        while True:
            with self.cv:
                while not self.queue and not self.host.workers_exit.is_set():
                    self.cv.wait(0.5)
                if not self.queue:
                    return
                delivery = self.queue.popleft()
                self.busy = True
            try:
                if self.host.past_deadline():
                    if not delivery.resend:  # a refresh is not worth keeping
                        self.host.dead_letter(self.action, delivery, 0,
                                              "not delivered before shutdown")
                else:
                    self.deliver(delivery)
            except Exception:  # one catch-all per job (convention 9): log, count, carry on
                log.exception("action %s: delivery %s failed unexpectedly", self.action.name,
                              delivery.id)
                self.host.count(self.action.name, "failed")
            finally:
                with self.cv:
                    self.busy = False

    def deliver(self, d: Delivery) -> None:
        name, host = self.action.name, self.host
        if self.action.dry_run:
            if not d.resend:
                host.record_delivery(name, d, "dry_run", detail=self.receiver.describe(d))
            return
        if host.is_disabled(name):
            if not d.resend:
                host.record_delivery(name, d, "disabled", reason="endpoint disabled after HTTP 410")
            return
        if d.resend:
            out = self.receiver.send(d)
            host.count(name, "resent" if out.ok else "resend_failed")
            if out.disable:
                host.disable(self.action, out.error)
            elif not out.ok and time.monotonic() - self._last_resend_log > 60:
                self._last_resend_log = time.monotonic()
                log.warning("action %s: Alertmanager resend failed: %s", name, out.error)
            return
        attempt = 0
        while True:
            attempt += 1
            out = self.receiver.send(d)
            if out.ok:
                host.record_delivery(name, d, "sent", http_status=out.http_status, attempt=attempt)
                host.delivered(self.action, d)
                return
            if out.disable:
                host.disable(self.action, out.error)
                host.record_delivery(name, d, "disabled", http_status=out.http_status,
                                     attempt=attempt,
                                     reason="HTTP 410 Gone: endpoint disabled until restart")
                host.dead_letter(self.action, d, attempt, out.error)
                return
            final = not out.retryable or attempt >= host.retry.attempts
            delay = 0.0 if final else host.retry.delay(attempt, out.retry_after)
            reason = out.error or "failed"
            if not final:
                reason += f"; retrying in {delay:.2f}s"
            host.record_delivery(name, d, "failed", http_status=out.http_status,
                                 attempt=attempt, reason=reason)
            if final:
                host.dead_letter(self.action, d, attempt, out.error)
                return
            if host.backoff(delay):
                host.dead_letter(self.action, d, attempt, f"{out.error}; stopped while retrying")
                return


def build_receiver(action: ActionConfig, ctx: ReceiverContext) -> Receiver:
    """The receiver for an action's ``type``."""
    from gpuwarden.alerts.receivers.alertmanager import AlertmanagerReceiver
    from gpuwarden.alerts.receivers.exec import ExecReceiver
    from gpuwarden.alerts.receivers.pagerduty import PagerDutyReceiver
    from gpuwarden.alerts.receivers.slack import SlackReceiver
    from gpuwarden.alerts.receivers.webhook import WebhookReceiver

    kinds: dict[str, type[Receiver]] = {
        "webhook": WebhookReceiver, "alertmanager": AlertmanagerReceiver,
        "pagerduty": PagerDutyReceiver, "slack": SlackReceiver, "exec": ExecReceiver,
    }
    try:
        cls = kinds[action.type]
    except KeyError:
        raise ValueError(f"unknown action type {action.type!r}") from None
    return cls(action, ctx)


__all__ = [
    "SUCCESS",
    "Delivery",
    "DeliveryWorker",
    "HttpReceiver",
    "Outcome",
    "Receiver",
    "ReceiverContext",
    "ReceiverError",
    "RetryPolicy",
    "WorkerHost",
    "build_receiver",
    "classify_status",
    "parse_retry_after",
]
