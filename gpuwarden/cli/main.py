"""The ``gpuwarden`` command line.

Exit codes: 0 ok, 1 runtime failure (cannot bind the port, daemon unreachable),
2 bad configuration or usage (the config file, the storage URL), as systemd and
shell scripts expect: a 2 means "fix the config", not "retry".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from gpuwarden import __version__
from gpuwarden.address import DEFAULT_LISTEN, DEFAULT_URL
from gpuwarden.errors import ConfigError, InstanceLocked, StoreError

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


def setup_logging(level: str) -> None:
    # Under systemd, journald stamps the time itself; elsewhere the time helps.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _config_problems(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return EXIT_CONFIG


def cmd_run(args: argparse.Namespace) -> int:
    from gpuwarden.config import load_config
    from gpuwarden.daemon.core import Daemon

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _config_problems(exc)
    setup_logging(os.environ.get("GPUWARDEN_LOG_LEVEL") or config.log_level)
    daemon = Daemon(config)
    # Before start(): READY=1 goes out inside start(), and systemd may send SIGTERM
    # the moment it has it; the default handler would kill us without a flush.
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except InstanceLocked as exc:  # another daemon owns this store and node
        print(f"gpuwarden: {exc}", file=sys.stderr)
        daemon.shutdown()
        return EXIT_RUNTIME
    except StoreError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        daemon.shutdown()
        return EXIT_CONFIG
    except OSError as exc:
        print(f"cannot listen on {config.listen}: {exc}", file=sys.stderr)
        daemon.shutdown()
        return EXIT_RUNTIME
    return daemon.run_forever()


def cmd_check_config(args: argparse.Namespace) -> int:
    from gpuwarden.config import load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        return _config_problems(exc)
    print(f"{args.file}: OK (node {config.node}, {len(config.servers)} servers, "
          f"{len(config.rules)} rules, {len(config.actions)} actions)")
    return EXIT_OK


def _get_json(base: str, path: str, timeout: float = 3.0) -> tuple[int, Any] | None:
    """GET a daemon endpoint; None (after saying why on stderr) when it cannot be read."""
    import requests

    try:
        response = requests.get(base.rstrip("/") + path, timeout=timeout)
        return response.status_code, response.json()
    except (requests.RequestException, ValueError) as exc:
        print(f"gpuwarden at {base} is not reachable: {exc}", file=sys.stderr)
        return None


def cmd_status(args: argparse.Namespace) -> int:
    got = _get_json(args.url, "/healthz")
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
    got = _get_json(args.url, "/api/v1/alerts")
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


def cmd_backtest(args: argparse.Namespace) -> int:
    import time

    from gpuwarden.config import load_config
    from gpuwarden.durations import parse_duration
    from gpuwarden.tools.backtest import dumps, format_table, run_backtest

    try:
        since = parse_duration(args.since)
    except ValueError as exc:
        print(f"--since: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _config_problems(exc)
    setup_logging(os.environ.get("GPUWARDEN_LOG_LEVEL") or "warning")
    try:
        result = run_backtest(config, since, now=time.time(), rule=args.rule)
    except StoreError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LookupError as exc:
        print(f"--rule: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(dumps(result) if args.json else format_table(result))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from gpuwarden.tools.demo import run_demo

    setup_logging(os.environ.get("GPUWARDEN_LOG_LEVEL") or "info")
    try:
        return run_demo(args.duration, args.listen, args.dir)
    except OSError as exc:
        print(f"demo: cannot start: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuwarden",
        description="GPU-fleet observability and alerting for LLM inference nodes.",
    )
    parser.add_argument("--version", action="version", version=f"gpuwarden {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", metavar="FILE", help="TOML config (default: built-in "
                     "defaults: NVML if present, else simulated GPUs; SQLite in the "
                     "state or working directory)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file (exit 2 if invalid)")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser("demo", help="the whole loop on a simulated node (no GPU needed)")
    demo.add_argument("--duration", type=float, default=0.0,
                      help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--listen", default=DEFAULT_LISTEN, help="HTTP address")
    demo.add_argument("--dir", help="where the demo's SQLite store goes (default: a temp dir)")
    demo.set_defaults(func=cmd_demo)

    backtest = sub.add_parser("backtest", help="replay stored samples through the rules: "
                              "what would have fired, when, for how long")
    backtest.add_argument("--config", metavar="FILE", help="TOML config (its store, node, "
                          "interval and rules; default rules included)")
    backtest.add_argument("--since", default="24h", help="how far back (default 24h)")
    backtest.add_argument("--rule", metavar="NAME", help="only this rule")
    backtest.add_argument("--json", action="store_true", help="machine-readable output")
    backtest.set_defaults(func=cmd_backtest)

    for name, func, text in (("status", cmd_status, "health of a running daemon"),
                             ("alerts", cmd_alerts, "pending and firing alerts of a running "
                              "daemon")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--url", default=DEFAULT_URL, help=f"daemon address (default {DEFAULT_URL})")
        if name == "alerts":
            p.add_argument("--json", action="store_true", help="print the raw JSON")
        p.set_defaults(func=func)

    from gpuwarden.cli.alerts import add_actions_command, add_audit_command
    from gpuwarden.cli.dashboards import add_subcommands as add_dashboard_commands

    add_audit_command(sub)
    add_actions_command(sub)
    add_dashboard_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
