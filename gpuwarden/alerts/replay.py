"""Replaying dead letters (``gpuwarden actions replay``): only what is still current.

A delivery that ran out of its retry window (or met a 4xx, or a 410) is kept in
``dead_letters`` with the alert data, the action's name and the last error. Once the
endpoint is fixed, an operator replays it: the action is looked up by name in the
*current* config (so a corrected URL or secret is used), the same delivery id is sent
(``webhook-id`` stays the idempotency key: a receiver that did get the first copy can
drop the replay), and the outcome is audited ``replayed`` or ``failed``. Replays skip
cooldowns and budgets: a person asked for them.

Replay sends the current state, never a stale one. For each alert of a letter it
looks for a later notice of the same alert to the same action in the audit trail (any
row of another delivery after the letter's ``dead_letter`` row, replays aside): a
resolved notice, or a newer firing, makes the letter's entry stale. A firing entry is
also stale when the ``alerts`` table shows the alert no longer in that activation
(resolved, or fired again since). Stale entries are not sent; they are audited
``superseded`` and a letter left with nothing to send is marked done (``dead-letters
--all`` shows it as superseded). So a firing whose alert resolved since is never
replayed: the receiver either got the resolved notice already (it was sent after the
dead letter, even to a receiver that never saw the firing) or gets it from its own
dead letter, replayed after the firing's in id order.

Which letters a command replays (all pending ones, one by id, or also those of an
endpoint that answered 410 Gone, see :func:`gone`) is the command's choice
(``cli/actions.py``).
"""

from __future__ import annotations

import json
import time

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from gpuwarden.alerts.action import ActionConfig
from gpuwarden.alerts.alert import rfc3339
from gpuwarden.alerts.audit import AuditLog, AuditRow, DeadLetter
from gpuwarden.alerts.receivers.base import Delivery, Outcome, ReceiverContext, RetryPolicy
from gpuwarden.alerts.receivers.registry import build_receiver
from gpuwarden.alerts.receivers.worker import without
from gpuwarden.storage import schema

REPLAY_WINDOW = 60.0  # an operator is waiting: retries within a minute at most


def gone(letter: DeadLetter) -> bool:
    """Whether the letter's endpoint answered 410 Gone (it disabled itself)."""
    try:
        meta = json.loads(letter.payload)
    except ValueError:
        meta = {}
    status = meta.get("http_status") if isinstance(meta, dict) else None
    return status == 410 or (letter.last_error or "").startswith("HTTP 410")


def _own_row(rows: list[AuditRow], delivery: Delivery) -> int | None:
    for r in rows:
        if r.result == "dead_letter" and r.detail.get("delivery") == delivery.id:
            return r.id
    return None


def _later_notice(audit: AuditLog, letter: DeadLetter, delivery: Delivery,
                  fp: str) -> AuditRow | None:
    """The first audit row of a later notice of alert ``fp`` to the letter's action."""
    rows = audit.query(since=letter.ts, action=letter.action, fingerprint=fp)
    own = _own_row(rows, delivery)
    for r in rows:
        other = r.detail.get("delivery")
        if not other or other == delivery.id or r.detail.get("replay"):
            continue
        if (r.id > own) if own is not None else (r.ts > letter.ts):
            return r
    return None


def _state(engine: Engine, fp: str) -> tuple[str, float | None] | None:
    """The alert's row in the ``alerts`` table (state, fired_at); None if unknown."""
    t = schema.alerts
    try:
        with engine.connect() as conn:
            row = conn.execute(select(t.c.state, t.c.fired_at)
                               .where(t.c.fingerprint == fp)).first()
    except SQLAlchemyError:  # no alerts table (a store the daemon never ran on)
        return None
    return None if row is None else (str(row.state), row.fired_at)


def stale(letter: DeadLetter, delivery: Delivery, audit: AuditLog,
          engine: Engine) -> dict[str, str]:
    """Fingerprint -> why, for the letter's entries that are no longer current."""
    out: dict[str, str] = {}
    for entry in delivery.alerts:
        fp = str(entry["fingerprint"])
        later = _later_notice(audit, letter, delivery, fp)
        if later is not None:
            status = later.detail.get("status", "a notice")
            out[fp] = (f"superseded: a later {status} notice of this alert "
                       f"({later.result} {time.strftime('%H:%M:%S', time.localtime(later.ts))})")
            continue
        if delivery.status != "firing":
            continue
        state = _state(engine, fp)
        if state is None:
            continue
        current, fired_at = state
        if current != "firing":
            out[fp] = f"superseded: the alert is {current} now"
        elif fired_at is None or rfc3339(fired_at) != entry.get("startsAt"):
            out[fp] = "superseded: the alert fired again since (a newer activation)"
    return out


def _record(audit: AuditLog, action: str, d: Delivery, result: str, letter: DeadLetter, *,
            http_status: int | None = None, attempt: int | None = None,
            reason: str | None = None) -> None:
    for entry in d.alerts:
        audit.record(action=action, result=result, labels=entry["labels"],
                     fingerprint=entry["fingerprint"], http_status=http_status,
                     attempt=attempt, reason=reason,
                     detail={"status": d.status, "delivery": d.id,
                             "dead_letter": letter.id, "replay": True})


def replay_letter(letter: DeadLetter, action: ActionConfig, ctx: ReceiverContext,
                  audit: AuditLog, retry: RetryPolicy, *,
                  engine: Engine | None = None) -> tuple[Outcome | None, list[str]]:
    """Send one dead letter again (with retries), audit and mark it.

    Returns the outcome (None when every entry was stale, nothing sent) and why the
    entries left out were stale.
    """
    delivery: Delivery | None = Delivery.from_json(letter.payload)
    assert delivery is not None
    reasons = stale(letter, delivery, audit, engine) if engine is not None else {}
    for fp, why in sorted(reasons.items()):
        cut, delivery = without(delivery, (fp,)) if delivery is not None else (None, None)
        if cut is not None:
            _record(audit, action.name, cut, "superseded", letter, reason=f"replay: {why}")
    if delivery is None:
        audit.mark_replayed(letter.id, attempts=0, ok=True,
                            last_error="superseded by a later notice; not sent")
        return None, sorted(set(reasons.values()))
    receiver = build_receiver(action, ctx)
    attempt, started = 0, time.monotonic()
    while True:
        attempt += 1
        out = receiver.send(delivery)
        delay = None if out.ok or not out.retryable else retry.next_delay(
            attempt, time.monotonic() - started, REPLAY_WINDOW, out.retry_after)
        if delay is None:
            break
        time.sleep(delay)
    _record(audit, action.name, delivery, "replayed" if out.ok else "failed", letter,
            http_status=out.http_status, attempt=attempt,
            reason=None if out.ok else f"replay: {out.error}")
    audit.mark_replayed(letter.id, attempts=attempt, ok=out.ok,
                        last_error=letter.last_error if out.ok else out.error)
    return out, sorted(set(reasons.values()))


def letter_state(dl: DeadLetter) -> str:
    """pending, gone (its endpoint answered 410), superseded or replayed."""
    if dl.replayed_at is None:
        return "gone" if gone(dl) else "pending"
    return "superseded" if (dl.last_error or "").startswith("superseded") else "replayed"
