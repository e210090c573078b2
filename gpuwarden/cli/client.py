"""``gpuwarden status`` and ``gpuwarden alerts``: ask a running daemon over its HTTP API.

They read ``/healthz`` and ``/api/v1/alerts`` (``api/``) rather than the store, so they
answer what the daemon knows now, and exit 1 when it cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gpuwarden.address import DEFAULT_URL
from gpuwarden.cli.common import EXIT_OK, EXIT_RUNTIME, Subcommands


def get_json(base: str, path: str, timeout: float = 3.0) -> tuple[int, Any] | None:
    """GET a daemon endpoint; None (after saying why on stderr) when it cannot be read."""
    import requests

    try:
        response = requests.get(base.rstrip("/") + path, timeout=timeout)
        return response.status_code, response.json()
    except (requests.RequestException, ValueError) as exc:
        print(f"gpuwarden at {base} is not reachable: {exc}", file=sys.stderr)
        return None


def cmd_status(args: argparse.Namespace) -> int:
    got = get_json(args.url, "/healthz")
    if got is None:
        return EXIT_RUNTIME
    code, detail = got
    print(f"{args.url}: {detail.get('status')} (cycles {detail.get('cycles')}, "
          f"last cycle {detail.get('last_cycle_age_seconds')} s ago)")
    if detail.get("store") == "degraded":  # the loop lives; its database does not keep up
        print(f"store degraded: {detail.get('store_last_error')}, "
              f"{detail.get('store_pending_samples')} samples waiting in memory")
    return EXIT_OK if code == 200 else EXIT_RUNTIME


def cmd_alerts(args: argparse.Namespace) -> int:
    got = get_json(args.url, "/api/v1/alerts")
    if got is None:
        return EXIT_RUNTIME
    code, alerts = got
    if args.json:
        print(json.dumps(alerts, indent=2))
    elif not alerts:
        print("no pending or firing alerts")
    else:
        for alert in alerts:
            labels = ",".join(f"{k}={v}" for k, v in sorted(alert.get("labels", {}).items()))
            print(f"{alert.get('state', '?'):8} {alert.get('name')} {{{labels}}} "
                  f"value={alert.get('value')} since {alert.get('active_at')}")
    return EXIT_OK if code == 200 else EXIT_RUNTIME


def add_commands(subparsers: Subcommands) -> None:
    """``gpuwarden status [--url URL]`` and ``gpuwarden alerts [--url URL] [--json]``."""
    for name, func, text in (("status", cmd_status, "health of a running daemon"),
                             ("alerts", cmd_alerts, "pending and firing alerts of a running "
                              "daemon")):
        p = subparsers.add_parser(name, help=text)
        p.add_argument("--url", default=DEFAULT_URL, help=f"daemon address (default {DEFAULT_URL})")
        if name == "alerts":
            p.add_argument("--json", action="store_true", help="print the raw JSON")
        p.set_defaults(func=func)
