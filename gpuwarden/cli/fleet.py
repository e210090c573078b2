"""``gpuwarden fleet status``: every node of a fleet sharing one PostgreSQL store.

Reads the config's store (``tools/fleet_status.py``): a SQLite store is one node's, so
the command says that fleet mode needs a shared PostgreSQL store and exits 2 (fix the
config); a database that cannot be read, or that no daemon has written yet, is one line
and exit 1. SQLAlchemy is imported when the command runs.
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
    config_problems,
)
from gpuwarden.errors import ConfigError, StoreError

NOT_FLEET = ("fleet mode needs a shared PostgreSQL store ([storage] url = "
             "\"postgresql+psycopg://...\" on every node); {url} is one node's")


def is_postgresql(url: str) -> bool:
    """Whether a storage URL names PostgreSQL (the only store a fleet can share)."""
    return url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from gpuwarden.config import load_config
    from gpuwarden.detectors.fleet_rules import effective_fleet_rules

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return config_problems(exc)
    url = config.storage.url
    if not is_postgresql(url):
        print(f"fleet status: {NOT_FLEET.format(url=url)}", file=sys.stderr)
        return EXIT_CONFIG
    from gpuwarden.storage.engine import open_engine
    from gpuwarden.tools.fleet_status import (
        dumps,
        format_text,
        read_fleet_status,
        silent_after,
    )

    try:
        engine = open_engine(url)
    except StoreError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        status = read_fleet_status(
            engine, time.time(),
            silent_after_intervals=silent_after(effective_fleet_rules(config.rules)))
    except StoreError as exc:
        print(f"fleet status: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        engine.dispose()
    print(dumps(status) if args.json else format_text(status))
    return EXIT_OK


def add_commands(subparsers: Subcommands) -> None:
    """``gpuwarden fleet status [--config FILE] [--json]``."""
    fleet = subparsers.add_parser("fleet", help="the nodes sharing a PostgreSQL store")
    sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    status = sub.add_parser("status", help="every node (last write, state, version, GPUs, "
                            "servers, firing alerts), the leader and the fleet alerts")
    status.add_argument("--config", metavar="FILE", help="TOML config naming the shared "
                        "PostgreSQL store")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=cmd_fleet_status)
