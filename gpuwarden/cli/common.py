"""What the commands share: exit codes, how config problems are printed, logging, and
the store as a command opens it.

Exit codes: 0 ok, 1 runtime failure (cannot bind the port, daemon unreachable, a replay
that failed), 2 bad configuration or usage (the config file, the storage URL), as systemd
and shell scripts expect: a 2 means "fix the config", not "retry".

Light to import: ``gpuwarden run`` builds the whole parser before its first cycle, so
SQLAlchemy is imported only when a command opens the store (:func:`audit_engine`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, TypeAlias

from gpuwarden.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Engine

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2

#: What each command module's ``add_commands`` adds its commands to.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def setup_logging(level: str) -> None:
    # Under systemd, journald stamps the time itself; elsewhere the time helps.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def config_problems(exc: ConfigError) -> int:
    """One line per problem on stderr (as ``check-config`` prints them); exit 2."""
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return EXIT_CONFIG


def audit_engine(url: str) -> Engine:
    """The configured store's engine (set up as the daemon's), with the audit tables.

    A command does not open a full ``Store`` (that replays the head log); it only
    needs the audit trail and the dead letters, and SQLite's WAL lets it read while the
    daemon writes. Raises ``StoreError`` for a URL or a database that cannot be used.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from gpuwarden.errors import StoreError
    from gpuwarden.storage import schema
    from gpuwarden.storage.engine import open_engine, write_transaction

    engine = open_engine(url, busy_timeout_ms=2000)
    try:
        with write_transaction(engine) as conn:
            schema.audit.create(conn, checkfirst=True)
            schema.dead_letters.create(conn, checkfirst=True)
    except SQLAlchemyError as exc:
        engine.dispose()
        shown = engine.url.render_as_string(hide_password=True)
        raise StoreError(f"cannot open store {shown}: {type(exc).__name__}") from exc
    return engine
