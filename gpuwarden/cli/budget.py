"""``gpuwarden budget``: the memory budget per GPU and server, for a capacity review.

From a running daemon (``--url``, its ``/api/v1/budget``: what it has stored, computed
where the store is) or from a config's store directly (``--config``, as ``backtest``
opens it: no daemon needed). Text by default (``tools/budget.py``), ``--json`` for the
endpoint's JSON, ``--chart FILE.png|.svg`` also draws a stacked bar per GPU
(``tools/budget_chart.py``, matplotlib imported only then).

Exit codes (``common.py``): 1 when the daemon cannot be reached, answers with an error,
or the chart cannot be written; 2 for a broken config, a store that cannot be opened or
a chart file name that is neither .png nor .svg.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from gpuwarden.address import DEFAULT_URL
from gpuwarden.cli.client import get_json
from gpuwarden.cli.common import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RUNTIME,
    Subcommands,
    config_problems,
    setup_logging,
)
from gpuwarden.errors import ConfigError, StoreError

#: Seconds the daemon is given: an hour of length histograms may come from its database.
FETCH_TIMEOUT_S = 30.0


def _from_daemon(url: str) -> dict[str, Any] | None:
    got = get_json(url, "/api/v1/budget", timeout=FETCH_TIMEOUT_S)
    if got is None:
        return None
    code, doc = got
    if code == 404:
        print(f"gpuwarden at {url} does not serve /api/v1/budget (an older version?)",
              file=sys.stderr)
        return None
    if code != 200 or not isinstance(doc, dict):
        error = doc.get("error") if isinstance(doc, dict) else doc
        print(f"gpuwarden at {url} could not compute the budget (HTTP {code}): {error}",
              file=sys.stderr)
        return None
    return doc


def _from_config(path: str | None) -> dict[str, Any] | int:
    from gpuwarden.config import load_config
    from gpuwarden.tools.budget import budget_from_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        return config_problems(exc)
    setup_logging(os.environ.get("GPUWARDEN_LOG_LEVEL") or "warning")
    try:
        return budget_from_config(config, time.time())
    except StoreError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def cmd_budget(args: argparse.Namespace) -> int:
    if args.chart is not None:
        from gpuwarden.tools.budget_chart import chart_format

        try:  # before the work: a typo in the file name is a usage error
            chart_format(args.chart)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
    if args.config is not None:
        got = _from_config(args.config)
        if isinstance(got, int):
            return got
        doc = got
    else:
        fetched = _from_daemon(args.url)
        if fetched is None:
            return EXIT_RUNTIME
        doc = fetched
    from gpuwarden.tools.budget import dumps, format_text

    print(dumps(doc) if args.json else format_text(doc))
    if args.chart is not None:
        from gpuwarden.tools.budget_chart import write_chart

        try:
            write_chart(doc, args.chart)
        except ImportError as exc:
            print(f"--chart needs matplotlib (pip install 'gpuwarden[chart]'): {exc}",
                  file=sys.stderr)
            return EXIT_RUNTIME
        except OSError as exc:
            print(f"--chart: cannot write {args.chart}: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
    return EXIT_OK


def add_commands(subparsers: Subcommands) -> None:
    """``gpuwarden budget [--config FILE | --url URL] [--json] [--chart FILE]``."""
    p = subparsers.add_parser("budget", help="memory budget per GPU and server: parts, "
                              "headroom, KV capacity, what-if, efficiency, cost")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--url", default=DEFAULT_URL,
                        help=f"ask a running daemon (default {DEFAULT_URL})")
    source.add_argument("--config", metavar="FILE",
                        help="read the config's store directly instead (no daemon needed)")
    p.add_argument("--json", action="store_true", help="print the budget's JSON")
    p.add_argument("--chart", metavar="FILE", help="also draw a stacked bar per GPU into "
                   "FILE.png or FILE.svg")
    p.set_defaults(func=cmd_budget)
