"""``gpuwarden demo`` and ``gpuwarden backtest``: the rule loop away from production.

``demo`` runs the whole daemon on a simulated node (``tools/demo.py``); ``backtest``
replays a store's samples through the configured rules (``tools/backtest.py``) to tune a
threshold before shipping it. The tools are imported when the command runs.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time

from gpuwarden.address import DEFAULT_LISTEN, split_host_port
from gpuwarden.cli.common import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RUNTIME,
    Subcommands,
    config_problems,
    setup_logging,
)
from gpuwarden.cli.fleet import NOT_FLEET, is_postgresql
from gpuwarden.errors import ConfigError, StoreError


def cmd_backtest(args: argparse.Namespace) -> int:
    from gpuwarden.config import load_config
    from gpuwarden.durations import parse_duration
    from gpuwarden.tools.backtest import dumps, format_table, run_backtest, run_fleet_backtest

    try:
        since = parse_duration(args.since)
    except ValueError as exc:
        print(f"--since: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return config_problems(exc)
    if args.fleet and not is_postgresql(config.storage.url):
        print(f"backtest --fleet: {NOT_FLEET.format(url=config.storage.url)}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(os.environ.get("GPUWARDEN_LOG_LEVEL") or "warning")
    try:
        if args.fleet:
            result = run_fleet_backtest(config, since, now=time.time(), rule=args.rule)
        else:
            result = run_backtest(config, since, now=time.time(), rule=args.rule)
    except StoreError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LookupError as exc:
        print(f"--rule: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(dumps(result) if args.json else format_table(result))
    return EXIT_OK


def demo_duration(text: str) -> float:
    """``--duration``: seconds (``45``) or a duration (``45s``, ``5m``); 0: until Ctrl-C."""
    from gpuwarden.durations import parse_duration

    try:
        seconds = float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {text!r}")
    return seconds


def listen_address(text: str) -> str:
    """``--listen``: HOST:PORT, checked before anything starts."""
    try:
        split_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def cmd_demo(args: argparse.Namespace) -> int:
    from gpuwarden.tools.demo import run_demo

    # Warnings only: the demo's own lines (where it listens, the timeline, the alerts)
    # are the story; the daemon's start-up lines would interleave with them.
    setup_logging(os.environ.get("GPUWARDEN_LOG_LEVEL") or "warning")
    try:
        return run_demo(args.duration, args.listen, args.dir)
    except OSError as exc:
        hint = (" (a gpuwarden daemon already there? --listen 127.0.0.1:0 takes a free port)"
                if exc.errno == errno.EADDRINUSE else "")
        print(f"demo: cannot start on {args.listen}: {exc}{hint}", file=sys.stderr)
        return EXIT_RUNTIME


def add_commands(subparsers: Subcommands) -> None:
    """``gpuwarden demo`` and ``gpuwarden backtest``."""
    demo = subparsers.add_parser("demo", help="the whole loop on a simulated node (no GPU "
                                 "needed)")
    demo.add_argument("--duration", type=demo_duration, default=0.0,
                      help="how long to run: seconds or a duration like 45s, 5m (default: "
                           "until Ctrl-C; the first alert fires ~20 s in)")
    demo.add_argument("--listen", type=listen_address, default=DEFAULT_LISTEN,
                      help="HTTP address (default: the "
                      f"daemon's, {DEFAULT_LISTEN}; 127.0.0.1:0 takes a free port)")
    demo.add_argument("--dir", help="where the demo's SQLite store goes (default: a temp dir)")
    demo.set_defaults(func=cmd_demo)

    backtest = subparsers.add_parser("backtest", help="replay stored samples through the "
                                     "rules: what would have fired, when, for how long")
    backtest.add_argument("--config", metavar="FILE", help="TOML config (its store, node, "
                          "interval and rules; default rules included)")
    backtest.add_argument("--since", default="24h", help="how far back (default 24h)")
    backtest.add_argument("--rule", metavar="NAME", help="only this rule")
    backtest.add_argument("--fleet", action="store_true", help="the fleet rules (scope = "
                          "\"fleet\") over every node's samples in the shared PostgreSQL "
                          "store, as the leader evaluates them (NodeSilent is not replayed)")
    backtest.add_argument("--json", action="store_true", help="machine-readable output")
    backtest.set_defaults(func=cmd_backtest)
