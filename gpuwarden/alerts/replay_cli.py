"""``gpuwarden actions replay`` and ``gpuwarden actions dead-letters``.

A delivery that exhausted its retries (or met a 4xx, or a 410) is kept in
``dead_letters`` with the alert data, the action's name and the last error. Once the
endpoint is fixed, an operator replays it: the action is looked up by name in the
*current* config (so a corrected URL or secret is used), the same delivery id is sent
(``webhook-id`` stays the idempotency key: a receiver that did get the first copy can
drop the replay), and the outcome is audited ``replayed`` or ``failed``. Replays skip
cooldowns and budgets: a person asked for them.
"""

from __future__ import annotations

import argparse
import sys
import time

from gpuwarden.alerts.audit import AuditLog, DeadLetter, open_engine
from gpuwarden.alerts.receivers import (
    Delivery,
    Outcome,
    ReceiverContext,
    RetryPolicy,
    build_receiver,
)
from gpuwarden.config import ActionConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def replay_letter(letter: DeadLetter, action: ActionConfig, ctx: ReceiverContext,
                  audit: AuditLog, retry: RetryPolicy) -> Outcome:
    """Send one dead letter again (with retries), audit and mark it; return the outcome."""
    delivery = Delivery.from_json(letter.payload)
    receiver = build_receiver(action, ctx)
    attempt = 0
    while True:
        attempt += 1
        out = receiver.send(delivery)
        if out.ok or not out.retryable or attempt >= retry.attempts:
            break
        time.sleep(retry.delay(attempt, out.retry_after))
    result = "replayed" if out.ok else "failed"
    for entry in delivery.alerts:
        audit.record(action=action.name, result=result, labels=entry["labels"],
                     fingerprint=entry["fingerprint"], http_status=out.http_status,
                     attempt=attempt, reason=None if out.ok else f"replay: {out.error}",
                     detail={"status": delivery.status, "delivery": delivery.id,
                             "dead_letter": letter.id, "replay": True})
    audit.mark_replayed(letter.id, attempts=attempt, ok=out.ok,
                        last_error=letter.last_error if out.ok else out.error)
    return out


def cmd_replay(args: argparse.Namespace) -> int:
    import requests

    from gpuwarden import __version__
    from gpuwarden.alerts.actions import external_url
    from gpuwarden.config import load_config
    from gpuwarden.errors import ConfigError, StoreError

    if args.id is None and not args.all:
        print("give --id N or --all", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    try:
        engine = open_engine(config.storage.url)
    except StoreError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    audit = AuditLog(engine)
    session = requests.Session()
    session.headers["User-Agent"] = f"gpuwarden/{__version__}"
    ctx = ReceiverContext(session=session, node=config.node,
                          external_url=external_url(config.listen, config.node),
                          interval=config.interval)
    actions = {a.name: a for a in config.actions}
    failed = 0
    try:
        letters = audit.dead_letters([args.id] if args.id is not None else None)
        if args.id is not None and not letters:
            print(f"no dead letter with id {args.id}", file=sys.stderr)
            return EXIT_FAILED
        for letter in letters:
            if letter.replayed_at is not None and not args.force:
                print(f"#{letter.id}: already replayed (use --force to send it again)")
                continue
            action = actions.get(letter.action)
            if action is None:
                print(f"#{letter.id}: no action named {letter.action!r} in the config; skipped")
                failed += 1
                continue
            out = replay_letter(letter, action, ctx, audit,
                                RetryPolicy(attempts=args.attempts))
            if out.ok:
                print(f"#{letter.id}: replayed to {letter.action}")
            else:
                failed += 1
                print(f"#{letter.id}: replay to {letter.action} failed: {out.error}")
    finally:
        session.close()
        engine.dispose()
    return EXIT_FAILED if failed else EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from gpuwarden.config import load_config
    from gpuwarden.errors import ConfigError, StoreError

    try:
        config = load_config(args.config)
        engine = open_engine(config.storage.url)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        letters = AuditLog(engine).dead_letters(pending_only=not args.all)
    finally:
        engine.dispose()
    if not letters:
        print("no dead letters")
    for dl in letters:
        d = Delivery.from_json(dl.payload)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dl.ts))
        state = "replayed" if dl.replayed_at is not None else "pending"
        print(f"#{dl.id}  {when}  {state:<8} {dl.action:<20} {d.rule or '-'} {d.status} "
              f"x{len(d.alerts)} attempts={dl.attempts} last_error={dl.last_error}")
    return EXIT_OK
