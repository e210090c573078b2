"""The ``gpuwarden`` command line: the top-level parser, ``run`` and ``check-config``.

Each other command group has its module in ``cli/`` with an ``add_commands`` that adds
its parsers (``tools``: demo, backtest; ``client``: status, alerts; ``audit``;
``actions``; ``export``: dashboards and rules; ``fleet``: fleet status). Exit codes
are in ``cli/common.py``.
Nothing imports ``cli/``; the entry point is :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gpuwarden import __version__
from gpuwarden.cli import actions, audit, budget, client, export, fleet, tools
from gpuwarden.cli.common import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RUNTIME,
    config_problems,
    setup_logging,
)
from gpuwarden.errors import ConfigError, InstanceLocked, StoreError

#: Threads for numpy's OpenBLAS, which starts one per core (up to 64) when numpy is
#: imported. The daemon does no linear algebra, so on a GPU node of 64 cores or more they
#: would be 63 idle threads. A value set in the environment is kept.
BLAS_THREADS = "1"


def cmd_run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", BLAS_THREADS)  # read when numpy loads
    from gpuwarden.config import load_config
    from gpuwarden.daemon.lifecycle import Daemon

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return config_problems(exc)
    setup_logging(os.environ.get("GPUWARDEN_LOG_LEVEL") or config.log_level)
    daemon = Daemon(config, freeze_gc=True)  # this process is the daemon's alone
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
        return config_problems(exc)
    from gpuwarden.cli.rule_lines import render

    # The effective rule set, not the file's [[rules]] count: the defaults run too.
    rule_lines = render(config.rules, {a.name for a in config.actions},
                        fleet=fleet.is_postgresql(config.storage.url))
    print(f"{args.file}: OK (node {config.node}, {_count(len(config.servers), 'server')}, "
          f"{_count(len(config.actions), 'action')})")
    print("\n".join(rule_lines))
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


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

    for group in (tools, client, audit, actions, export, budget, fleet):
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
