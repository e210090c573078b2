"""Receivers: turn one :class:`Delivery` into one call to the outside world.

A receiver makes exactly one attempt and reports an :class:`Outcome`. Retries, backoff
and ordering are the ``DeliveryWorker``'s (``worker.py``, one thread per action), on the
:class:`RetryPolicy` schedule below, so every receiver gets the same guard rails; the
receivers are found by action type in ``registry.py``. The classification of results
follows Alertmanager and Standard Webhooks: 2xx is success; timeouts, connection
errors, 429 and 5xx are retried (429 honouring ``Retry-After``); 410 Gone disables the
endpoint; every other status is a permanent failure.

Retry schedule (:class:`RetryPolicy`, defaults): after failed attempt *n* wait
``min(60 s, 0.5 s * 2**(n-1))`` +-20 % jitter (never above 60 s), until the action's
``retry_for`` (default 15 min) has passed since the first attempt; the last wait is cut
short so that one attempt falls exactly at the end of the window, then the delivery is
a dead letter. Nominal attempt times, seconds after the first:

=======  ======  ====================================================
attempt  at      jittered range
=======  ======  ====================================================
1        0       0
2        0.5     0.4-0.6
3        1.5     1.2-1.8
4        3.5     2.8-4.2
5        7.5     6.0-9.0
6        15.5    12.4-18.6
7        31.5    25.2-37.8
8        63.5    50.8-76.2 (waits from here on: 48-60 s)
9..21    +60 s   123.5, 183.5, ... 843.5 nominal (jittered: 48-60 s apart)
22       900     ``retry_for``: the last attempt, then the dead letter
=======  ======  ====================================================

So 22-24 attempts in 15 minutes (23 typically); an outage that ends inside the window
is followed by an attempt at most 60 s later (sooner in the first minute). A ``Retry-After``
(429 or 5xx; delta-seconds or HTTP date) replaces the computed wait, clamped to
0.5 s-300 s and to the window's end. ``retry_for = "0s"`` means one attempt.

Error texts in an :class:`Outcome` never quote a URL path, a header or an exception's
own message (``requests`` puts the full URL, e.g. a Slack webhook token, into it):
only the exception class and the endpoint's origin.
"""

from __future__ import annotations

import abc
import email.utils
import json
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from gpuwarden.alerts.payload import AlertEntry, origin
from gpuwarden.errors import ReceiverError

if TYPE_CHECKING:
    import requests

    from gpuwarden.alerts.action import ActionConfig


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

    def to_json(self, meta: Mapping[str, Any] | None = None) -> str:
        """The dead-letter form (no secrets: signatures and keys are added at send time).

        ``meta`` adds facts about the failure (``http_status``: a 410 there tells replay
        that the endpoint disabled itself); :meth:`from_json` ignores them.
        """
        return json.dumps({
            **(meta or {}),
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
    # False only when the receiver certainly never got the request (no connection could
    # be made, the request could not be built, the command could not start): then a
    # resolved notice that supersedes this firing has nothing to resolve.
    reached: bool = True



@dataclass(frozen=True, slots=True)
class ReceiverContext:
    """What receivers need besides their action: the shared session and where we are.

    ``session`` may be what makes the session: ``requests`` is then imported by the
    first delivery over HTTP, not by a daemon that never sends one (:meth:`http`).
    """

    session: requests.Session | Callable[[], requests.Session]
    node: str
    external_url: str  # e.g. http://gpu-node-01:9842
    interval: float = 1.0  # the daemon's evaluation interval
    am_resend: float = 60.0  # Alertmanager resend period (Prometheus' resend-delay)
    clock: Any = time.time

    def http(self) -> requests.Session:
        """The shared session (made by the first call when given as its maker)."""
        session = self.session
        return session() if callable(session) else session


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Jittered exponential backoff within a time window (see the module doc's table).

    The wait after failed attempt *n* is ``min(max_delay, base * factor**(n-1))`` times a
    random factor in ``[1 - jitter, 1 + jitter]``, never above ``max_delay``. Attempts go
    on until ``retry_for`` seconds (the action's, unless the policy sets one) have passed
    since the first; the last wait is shortened so that one attempt falls exactly at the
    end of the window: an outage that ends inside the window is always followed by an
    attempt. A ``Retry-After`` from the server replaces the computed wait, at least
    ``base`` (``Retry-After: 0`` must not become a busy loop) and at most
    ``max_retry_after``, so a hostile or confused endpoint cannot park a worker for
    hours. ``attempts`` (0: none) additionally caps the number of tries (replay, tests).
    """

    base: float = 0.5
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2
    max_retry_after: float = 300.0
    attempts: int = 0
    retry_for: float | None = None
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return max(self.base, min(retry_after, self.max_retry_after))
        d = min(self.max_delay, self.base * self.factor ** max(0, attempt - 1))
        return min(self.max_delay, d * self.rng.uniform(1 - self.jitter, 1 + self.jitter))

    def next_delay(self, attempt: int, elapsed: float, retry_for: float,
                   retry_after: float | None = None) -> float | None:
        """The wait before attempt ``attempt + 1``, or None: give up (dead letter).

        ``elapsed``: seconds since the first attempt started; ``retry_for``: the
        action's window (overridden by the policy's own ``retry_for`` when set).
        """
        if self.attempts and attempt >= self.attempts:
            return None
        left = (retry_for if self.retry_for is None else self.retry_for) - elapsed
        if left <= 0:
            return None
        return min(self.delay(attempt, retry_after), left)

    def nominal(self, retry_for: float) -> list[float]:
        """Attempt times (seconds after the first) without jitter, for the docs."""
        times, t, n = [0.0], 0.0, 1
        while t < retry_for and (not self.attempts or n < self.attempts):
            t = min(retry_for, t + min(self.max_delay, self.base * self.factor ** (n - 1)))
            times.append(t)
            n += 1
        return times


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


def _connect_failed(exc: BaseException) -> bool:
    """Whether ``requests`` failed before a connection existed (refused, no route, DNS):
    then nothing was sent. A reset after connecting may have delivered the request."""
    from urllib3.exceptions import NewConnectionError

    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError) or isinstance(
        exc.args[0] if exc.args else None, NewConnectionError)


class Receiver(abc.ABC):
    """One configured action's way of delivering; one attempt per :meth:`send`."""

    #: Whether several alerts of one rule may share one call (webhook, Slack,
    #: Alertmanager); PagerDuty and exec are per alert (dedup key, one process each).
    groups = True
    #: The ``[[actions]]`` keys this type cannot work without: the config reports each
    #: one missing as ``required for type '<type>'``.
    required: ClassVar[tuple[str, ...]] = ()

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

    required = ("url",)

    def build(self, delivery: Delivery) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the request (headers may hold secrets)."""
        raise NotImplementedError

    def url_for(self, delivery: Delivery) -> str:
        assert self.action.url is not None
        return self.action.url

    def base_headers(self) -> dict[str, str]:
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
            return Outcome(ok=False, error=f"cannot build request: {exc}", reached=False)
        url = self.url_for(delivery)
        try:
            resp = self.ctx.http().post(url, data=body, headers=headers,
                                         timeout=self.action.timeout, allow_redirects=False)
        except requests.ConnectTimeout:
            return Outcome(ok=False, retryable=True, reached=False,
                           error=f"connect timeout after {self.action.timeout:g}s "
                                 f"({origin(url)})")
        except requests.Timeout:
            return Outcome(ok=False, retryable=True,
                           error=f"timeout after {self.action.timeout:g}s ({origin(url)})")
        except requests.ConnectionError as exc:
            return Outcome(ok=False, retryable=True, reached=not _connect_failed(exc),
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

