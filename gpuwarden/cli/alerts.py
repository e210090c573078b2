"""The ``audit`` and ``actions`` subcommands' argument parsers, without their weight.

``gpuwarden run`` builds the whole CLI parser before it starts; importing the audit log
and the receivers there would load SQLAlchemy (~0.3 s) before the first cycle is even
collected. So the parsers live here and each command imports its module when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

# What an audit row's ``result`` can be (the audit log writes only these).
AUDIT_RESULTS = ("sent", "failed", "suppressed", "dry_run", "disabled", "dead_letter",
                 "escalated", "replayed", "no_action", "superseded")


def _cmd_audit(args: argparse.Namespace) -> int:
    from gpuwarden.alerts.audit import cmd_audit

    return cmd_audit(args)


def _cmd_replay(args: argparse.Namespace) -> int:
    from gpuwarden.alerts.replay import cmd_replay

    return cmd_replay(args)


def _cmd_list(args: argparse.Namespace) -> int:
    from gpuwarden.alerts.replay import cmd_list

    return cmd_list(args)


def add_audit_command(subparsers: Any) -> argparse.ArgumentParser:
    """``gpuwarden audit [--config FILE] [--since 24h] [--action NAME] [--json]``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "audit", help="what the alert actions did (sent, suppressed, failed, ...)")
    p.add_argument("--config", metavar="FILE", help="TOML config naming the store")
    p.add_argument("--since", default="24h", help="how far back (default 24h)")
    p.add_argument("--action", help="only this action")
    p.add_argument("--result", choices=AUDIT_RESULTS, help="only this result")
    p.add_argument("--limit", type=int, default=10_000, help="at most this many rows")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_audit)
    return p


def add_actions_command(subparsers: Any) -> argparse.ArgumentParser:
    """``gpuwarden actions {replay,dead-letters}``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "actions", help="alert actions: list and replay dead letters")
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
    replay.set_defaults(func=_cmd_replay)
    lst = sub.add_parser("dead-letters", help="list dead letters")
    lst.add_argument("--config", metavar="FILE", help="TOML config naming the store")
    lst.add_argument("--all", action="store_true", help="include replayed ones")
    lst.set_defaults(func=_cmd_list)
    return p
