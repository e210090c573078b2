"""``gpuwarden audit``: what the alert actions did (sent, suppressed and why, failed...).

The rows come from the audit trail (``alerts/audit.py``) of the configured store, read
while the daemon may be writing it. The audit log is imported when the command runs:
the parser is built by ``gpuwarden run`` too, before its first cycle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from gpuwarden.alerts.alert import AUDIT_RESULTS
from gpuwarden.cli.common import (
    EXIT_CONFIG,
    EXIT_OK,
    Subcommands,
    audit_engine,
    config_problems,
)
from gpuwarden.errors import ConfigError, StoreError


def _fmt_ts(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_audit(args: argparse.Namespace) -> int:
    from gpuwarden.alerts.audit import AuditLog
    from gpuwarden.config import load_config
    from gpuwarden.durations import parse_duration

    try:
        config = load_config(args.config)
        since = time.time() - parse_duration(args.since)
    except ConfigError as exc:
        return config_problems(exc)
    except ValueError as exc:
        print(f"--since: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        engine = audit_engine(config.storage.url)
    except StoreError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        rows = AuditLog(engine).query(since=since, action=args.action, result=args.result,
                                      limit=args.limit)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        print(f"no audit rows since {_fmt_ts(since)}")
        return EXIT_OK
    for r in rows:
        status = f" http={r.http_status}" if r.http_status is not None else ""
        attempt = f" attempt={r.attempt}" if r.attempt is not None else ""
        reason = f"  ({r.reason})" if r.reason else ""
        print(f"{_fmt_ts(r.ts)}  {r.result:<11} {r.action:<20} {r.target or '-'}"
              f"{status}{attempt}{reason}")
    return EXIT_OK


def add_commands(subparsers: Subcommands) -> None:
    """``gpuwarden audit [--config FILE] [--since 24h] [--action NAME] [--json]``."""
    p = subparsers.add_parser(
        "audit", help="what the alert actions did (sent, suppressed, failed, ...)")
    p.add_argument("--config", metavar="FILE", help="TOML config naming the store")
    p.add_argument("--since", default="24h", help="how far back (default 24h)")
    p.add_argument("--action", help="only this action")
    p.add_argument("--result", choices=AUDIT_RESULTS, help="only this result")
    p.add_argument("--limit", type=int, default=10_000, help="at most this many rows")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_audit)
