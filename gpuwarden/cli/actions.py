"""``gpuwarden actions replay`` and ``gpuwarden actions dead-letters``.

What replay sends (only what is still current) is decided in ``alerts/replay.py``; this
module chooses the letters. ``--all`` takes every pending one but skips the letters of
an endpoint that answered 410 Gone (the daemon disabled the action until restart), and
the other letters of that action, unless ``--include-disabled`` is given (after fixing
the endpoint); ``--id N`` names a letter and is always tried; a letter replayed before
is sent again only with ``--force``.
"""

from __future__ import annotations

import argparse
import sys
import time

from gpuwarden.cli.common import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RUNTIME,
    Subcommands,
    audit_engine,
    config_problems,
)
from gpuwarden.errors import ConfigError, StoreError


def cmd_replay(args: argparse.Namespace) -> int:
    import requests

    from gpuwarden import __version__
    from gpuwarden.alerts.audit import AuditLog
    from gpuwarden.alerts.payload import external_url
    from gpuwarden.alerts.receivers.base import ReceiverContext, RetryPolicy
    from gpuwarden.alerts.replay import gone, replay_letter
    from gpuwarden.config import load_config

    if args.id is None and not args.all:
        print("give --id N or --all", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return config_problems(exc)
    try:
        engine = audit_engine(config.storage.url)
    except StoreError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return EXIT_CONFIG
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
            return EXIT_RUNTIME
        disabled = set() if args.include_disabled or args.id is not None else {
            dl.action for dl in audit.dead_letters() if gone(dl)}
        for letter in letters:
            if letter.replayed_at is not None and not args.force:
                print(f"#{letter.id}: already replayed (use --force to send it again)")
                continue
            action = actions.get(letter.action)
            if action is None:
                print(f"#{letter.id}: no action named {letter.action!r} in the config; skipped")
                failed += 1
                continue
            if letter.action in disabled:
                print(f"#{letter.id}: skipped: {letter.action}'s endpoint answered 410 Gone "
                      "and was disabled; fix it, then use --include-disabled")
                continue
            out, why = replay_letter(letter, action, ctx, audit,
                                     RetryPolicy(attempts=args.attempts), engine=engine)
            note = f" ({'; '.join(why)}: left out)" if why and out is not None else ""
            if out is None:
                print(f"#{letter.id}: not sent, no longer current ({'; '.join(why)})")
            elif out.ok:
                print(f"#{letter.id}: replayed to {letter.action}{note}")
            else:
                failed += 1
                print(f"#{letter.id}: replay to {letter.action} failed: {out.error}{note}")
    finally:
        session.close()
        engine.dispose()
    return EXIT_RUNTIME if failed else EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from gpuwarden.alerts.audit import AuditLog
    from gpuwarden.alerts.receivers.base import Delivery
    from gpuwarden.alerts.replay import letter_state
    from gpuwarden.config import load_config

    try:
        config = load_config(args.config)
        engine = audit_engine(config.storage.url)
    except ConfigError as exc:
        return config_problems(exc)
    except StoreError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        letters = AuditLog(engine).dead_letters(pending_only=not args.all)
    finally:
        engine.dispose()
    if not letters:
        print("no dead letters")
    for dl in letters:
        d = Delivery.from_json(dl.payload)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dl.ts))
        print(f"#{dl.id}  {when}  {letter_state(dl):<10} {dl.action:<20} {d.rule or '-'} "
              f"{d.status} x{len(d.alerts)} attempts={dl.attempts} last_error={dl.last_error}")
    return EXIT_OK


def add_commands(subparsers: Subcommands) -> None:
    """``gpuwarden actions {replay,dead-letters}``."""
    p = subparsers.add_parser("actions", help="alert actions: list and replay dead letters")
    sub = p.add_subparsers(dest="actions_command", required=True, metavar="SUBCOMMAND")
    replay = sub.add_parser(
        "replay", help="send dead letters again (their current state: never a firing "
        "whose alert resolved since)",
        description="Send dead letters again through the current config's actions. An "
        "entry whose alert has a later notice (it resolved, or fired again) is not sent "
        "but marked superseded. --all skips the letters of an endpoint that answered 410 "
        "Gone unless --include-disabled is given.")
    replay.add_argument("--config", metavar="FILE", help="TOML config (actions and store)")
    which = replay.add_mutually_exclusive_group()
    which.add_argument("--id", type=int, metavar="N", help="replay dead letter N")
    which.add_argument("--all", action="store_true",
                       help="replay every pending dead letter (not to endpoints disabled by "
                            "410 unless --include-disabled)")
    replay.add_argument("--force", action="store_true",
                        help="send a dead letter again even if it was replayed before")
    replay.add_argument("--include-disabled", action="store_true",
                        help="with --all, also replay to endpoints that answered 410 Gone "
                             "(once they are fixed)")
    replay.add_argument("--attempts", type=int, default=3,
                        help="tries per letter, within a minute (default 3)")
    replay.set_defaults(func=cmd_replay)
    lst = sub.add_parser("dead-letters", help="list dead letters")
    lst.add_argument("--config", metavar="FILE", help="TOML config naming the store")
    lst.add_argument("--all", action="store_true", help="include replayed ones")
    lst.set_defaults(func=cmd_list)
