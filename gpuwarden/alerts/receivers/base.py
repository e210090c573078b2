"""Receivers: turn one :class:`Delivery` into one call to the outside world.

A receiver makes exactly one attempt and reports an :class:`Outcome`. Retries and
backoff are the :class:`DeliveryWorker`'s (one thread per action), which reports every
attempt to the dispatcher (``alerts/actions.py``) for the audit trail and dead letters,
so every receiver gets the same guard rails. The classification of results follows
Alertmanager and Standard Webhooks: 2xx is success; timeouts, connection errors, 429
and 5xx are retried (429 honouring ``Retry-After``); 410 Gone disables the endpoint;
every other status is a permanent failure.

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

Ordering and supersession (:class:`DeliveryWorker`): per action and alert
(fingerprint), notices leave in the order they were made; a backoff holds up only the
alerts of the delivery in backoff. A notice for an alert whose firing is still waiting
(queued, or in backoff) supersedes that firing: the firing's entry is dropped and
audited ``superseded``, and the backoff is cut short. A resolved notice that
supersedes a firing the receiver never got (no attempt made, or every attempt failed
before a connection existed: refused, unreachable) is dropped as well, as
Alertmanager sends a resolved only for a notified firing: the receiver saw nothing,
so there is nothing to resolve. If any attempt may have reached it (an HTTP answer, a
timeout, an attempt in flight), the resolved is sent, at once. A firing that was
already dead-lettered is not pending any more: its resolved is sent (a lone resolved
is harmless, a missing one leaves the receiver believing the alert fires).

Error texts in an :class:`Outcome` never quote a URL path, a header or an exception's
own message (``requests`` puts the full URL, e.g. a Slack webhook token, into it):
only the exception class and the endpoint's origin.
"""

from __future__ import annotations

import abc
import dataclasses
import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gpuwarden.alerts.payload import AlertEntry, origin
from gpuwarden.errors import ReceiverError

log = logging.getLogger(__name__)

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
            return Outcome(ok=False, error=f"cannot build request: {exc}", reached=False)
        url = self.url_for(delivery)
        try:
            resp = self.ctx.session.post(url, data=body, headers=headers,
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


class WorkerHost(Protocol):
    """What a :class:`DeliveryWorker` reports to (the dispatcher)."""

    retry: RetryPolicy
    workers_exit: threading.Event

    def clock(self) -> float: ...
    def wait(self, cv: threading.Condition, seconds: float) -> None: ...
    def is_stopping(self) -> bool: ...
    def is_disabled(self, name: str) -> bool: ...
    def count(self, action: str, result: str, n: int = 1) -> None: ...
    def record_delivery(self, action: str, d: Delivery, result: str, *,
                        http_status: int | None = None, attempt: int | None = None,
                        reason: str | None = None,
                        detail: Mapping[str, Any] | None = None) -> None: ...
    def dead_letter(self, action: ActionConfig, d: Delivery, attempts: int,
                    error: str | None, *, http_status: int | None = None) -> None: ...
    def disable(self, action: ActionConfig, error: str | None) -> None: ...
    def delivered(self, action: ActionConfig, d: Delivery) -> None: ...
    def past_deadline(self) -> bool: ...


RESOLVED_FIRST = "resolved before it was delivered"
REPLACED = "replaced by a newer notice of the same alert before it was delivered"
NEVER_SEEN = ("the receiver never got the firing (it was not delivered before the alert "
              "resolved): nothing to resolve")


@dataclass(slots=True, eq=False)
class Pending:
    """A delivery waiting for its first or next attempt, with its retry state."""

    delivery: Delivery
    due: float = 0.0  # clock time of the next attempt (0: now)
    attempt: int = 0  # attempts made so far
    started: float | None = None  # clock time of the first attempt
    reached: bool = False  # some attempt may have reached the receiver
    sending: bool = False  # an attempt is in flight (its outcome is unknown)
    cut: dict[str, str] = field(default_factory=dict)  # fingerprint -> why superseded

    @property
    def keys(self) -> frozenset[str]:
        """Fingerprints whose order this delivery takes part in (resends: none)."""
        return frozenset() if self.delivery.resend else frozenset(self.delivery.fingerprints)


def without(d: Delivery, fingerprints: Collection[str]) -> tuple[Delivery | None, Delivery | None]:
    """``d`` split into (the alerts in ``fingerprints``, the rest); None for an empty
    part. The rest is a different body, so it gets its own delivery id."""
    from gpuwarden.alerts.payload import delivery_id

    cut = tuple(a for a in d.alerts if a["fingerprint"] in fingerprints)
    rest = tuple(a for a in d.alerts if a["fingerprint"] not in fingerprints)
    if not cut:
        return None, d
    if not rest:
        return d, None
    return (dataclasses.replace(d, alerts=cut),
            dataclasses.replace(d, alerts=rest, id=delivery_id(d.action, d.status, list(rest))))


class DeliveryWorker:
    """One action's delivery thread: attempts, retries on the policy's schedule, ordering
    per alert, supersession, and the final verdict (sent, dead letter, superseded).

    Everything waiting (new deliveries and those in backoff) is one list in arrival
    order. The next attempt goes to the first entry that is due and shares no
    fingerprint with an earlier entry: notices of one alert leave in the order they were
    made, while a backoff holds up only the alerts it concerns. A notice for an alert
    whose firing is still waiting supersedes that firing (see the module doc), and the
    backoff waits on the same condition that :meth:`put` signals, so the superseding
    notice goes out at once.

    Decisions about *whether* to deliver live in the dispatcher (its ``host``); this
    only drives the receiver and reports every attempt back through the host.
    """

    def __init__(self, host: WorkerHost, action: ActionConfig, receiver: Receiver) -> None:
        self.host = host
        self.action = action
        self.receiver = receiver
        self.pending: list[Pending] = []
        self.cv = threading.Condition()
        self.busy = False
        self.thread = threading.Thread(target=self.run, name=f"gpuwarden-action-{action.name}",
                                       daemon=True)
        self._last_resend_log = 0.0

    @property
    def queue(self) -> list[Pending]:  # what metrics and wait_idle look at
        return self.pending

    def put(self, delivery: Delivery) -> None:
        notes: list[tuple[Delivery, str]] = []
        with self.cv:
            d: Delivery | None = delivery
            if not delivery.resend:
                d = self._supersede(delivery, notes)
            if d is not None:
                self.pending.append(Pending(d))
            self.cv.notify_all()
        self._note(notes)

    def _supersede(self, new: Delivery, notes: list[tuple[Delivery, str]]) -> Delivery | None:
        """Drop the firings of ``new``'s alerts that are still waiting (under ``cv``);
        a resolved notice for a firing the receiver never got is dropped as well."""
        fps = set(new.fingerprints)
        reason = RESOLVED_FIRST if new.status == "resolved" else REPLACED
        unseen: set[str] = set()
        for p in list(self.pending):
            d = p.delivery
            if d.resend or d.status != "firing":
                continue
            hit = fps.intersection(d.fingerprints) - p.cut.keys()
            if not hit:
                continue
            if not (p.reached or p.sending):
                unseen |= hit
            if p.sending:  # the worker applies it when the attempt fails
                p.cut.update(dict.fromkeys(hit, reason))
                continue
            cut, rest = without(d, hit)
            if cut is not None:
                notes.append((cut, reason))
            if rest is None:
                self.pending.remove(p)
            else:
                p.delivery = rest
        if new.status == "resolved" and unseen:
            cut, rest = without(new, unseen)
            if cut is not None:
                notes.append((cut, NEVER_SEEN))
            return rest
        return new

    def _note(self, notes: list[tuple[Delivery, str]]) -> None:
        for d, reason in notes:
            self.host.record_delivery(self.action.name, d, "superseded", reason=reason)

    def run(self) -> None:
        while True:
            with self.cv:
                p = self._next()
                if p is None:
                    return
            try:
                self._work(p)
            except Exception:  # one catch-all per job (convention 9): log, count, carry on
                log.exception("action %s: delivery %s failed unexpectedly", self.action.name,
                              p.delivery.id)
                self.host.count(self.action.name, "failed")
                self._done(p)
            finally:
                with self.cv:
                    p.sending = False
                    self.busy = False
                    self.cv.notify_all()

    def _next(self) -> Pending | None:
        """The next entry to attempt (under ``cv``); None when the worker should exit."""
        while True:
            if not self.pending:
                if self.host.workers_exit.is_set():
                    return None
                self.cv.wait(0.5)
                continue
            now, stopping = self.host.clock(), self.host.is_stopping()
            taken: set[str] = set()
            soonest: float | None = None
            for p in self.pending:
                if not p.keys & taken:
                    if stopping or p.due <= now:
                        p.sending = True
                        self.busy = True
                        return p
                    soonest = p.due if soonest is None else min(soonest, p.due)
                taken |= p.keys
            if soonest is None:  # cannot happen: the first entry is never held up
                self.cv.wait(0.5)
            else:
                self.host.wait(self.cv, soonest - now)  # put() and stop() cut it short

    def _done(self, p: Pending) -> None:
        with self.cv:
            if p in self.pending:
                self.pending.remove(p)
            self.cv.notify_all()

    def _apply_cut(self, p: Pending) -> Delivery | None:
        """Drop what was superseded while an attempt was in flight; None when nothing is
        left (the entry is then done)."""
        notes: list[tuple[Delivery, str]] = []
        with self.cv:
            if p.cut:
                for fp, why in sorted(p.cut.items()):
                    cut, rest = without(p.delivery, (fp,))
                    if cut is not None:
                        notes.append((cut, why))
                    if rest is None:
                        break
                    p.delivery = rest
                else:
                    rest = p.delivery
                p.cut.clear()
                if rest is None:
                    self.pending.remove(p)
            d = p.delivery if p in self.pending else None
        self._note(notes)
        return d

    def _work(self, p: Pending) -> None:
        name, host = self.action.name, self.host
        d = self._apply_cut(p)
        if d is None:
            return
        if self.action.dry_run or host.is_disabled(name) or d.resend:
            self._done(p)
            self._once(d)
            return
        if p.attempt and host.is_stopping():
            self._done(p)
            host.dead_letter(self.action, d, p.attempt, "stopped while retrying")
            return
        if host.past_deadline():
            self._done(p)
            host.dead_letter(self.action, d, p.attempt, "not delivered before shutdown")
            return
        if p.started is None:
            p.started = host.clock()
        p.attempt += 1
        out = self.receiver.send(d)
        with self.cv:
            p.sending = False
            p.reached = p.reached or out.reached
            if out.ok:
                p.cut.clear()  # delivered whole: the superseding notice follows it
        if out.ok:
            self._done(p)
            host.record_delivery(name, d, "sent", http_status=out.http_status,
                                 attempt=p.attempt)
            host.delivered(self.action, d)
            return
        if out.disable:
            host.disable(self.action, out.error)
            host.record_delivery(name, d, "disabled", http_status=out.http_status,
                                 attempt=p.attempt,
                                 reason="HTTP 410 Gone: endpoint disabled until restart")
        delay = None
        if out.retryable and not host.is_stopping():
            delay = host.retry.next_delay(p.attempt, host.clock() - p.started,
                                          self.action.retry_for, out.retry_after)
        if not out.disable:
            reason = out.error or "failed"
            if delay is not None:
                reason += f"; retrying in {delay:.2f}s"
            host.record_delivery(name, d, "failed", http_status=out.http_status,
                                 attempt=p.attempt, reason=reason)
        left = self._apply_cut(p)
        if left is None:
            return
        if delay is None:
            self._done(p)
            host.dead_letter(self.action, left, p.attempt, out.error,
                             http_status=out.http_status)
            return
        with self.cv:
            p.due = host.clock() + delay

    def _once(self, d: Delivery) -> None:
        """Dry runs, disabled endpoints and Alertmanager refreshes: no retries."""
        name, host = self.action.name, self.host
        if self.action.dry_run:
            if not d.resend:
                host.record_delivery(name, d, "dry_run", detail=self.receiver.describe(d))
            return
        if host.is_disabled(name):
            if not d.resend:
                host.record_delivery(name, d, "disabled", reason="endpoint disabled after HTTP 410")
            return
        out = self.receiver.send(d)
        host.count(name, "resent" if out.ok else "resend_failed")
        if out.disable:
            host.disable(self.action, out.error)
        elif not out.ok and time.monotonic() - self._last_resend_log > 60:
            self._last_resend_log = time.monotonic()
            log.warning("action %s: Alertmanager resend failed: %s", name, out.error)


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
    "Pending",
    "Receiver",
    "ReceiverContext",
    "ReceiverError",
    "RetryPolicy",
    "WorkerHost",
    "build_receiver",
    "classify_status",
    "parse_retry_after",
]
