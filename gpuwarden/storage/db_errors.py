"""What a failed database call is counted and reported as.

The store counts its failed writes by reason (``store_write_errors_total{reason}``) so
that a user tells a locked SQLite file from a full disk or a PostgreSQL that went away,
and reports each failure as the driver's first line rather than SQLAlchemy's whole
wrapped message (statement, parameters and a documentation link).
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

#: What a database call raises when the database fails it (not a bug of ours).
DB_ERRORS = (DBAPIError, SQLAlchemyError, TimeoutError)


def write_error_reason(exc: BaseException) -> str:
    """The ``reason`` label a failed write is counted under.

    ``timeout``: the database did not answer in time (PostgreSQL statement or lock
    timeout, SQLite busy past busy_timeout counts as ``locked``); ``unavailable``: no
    connection; ``disk_full``; ``error``: anything else (a bug or a schema problem).
    """
    text = str(getattr(exc, "orig", None) or exc).lower()
    if isinstance(exc, TimeoutError) or "timeout" in text or "timed out" in text or (
            "canceling statement" in text):
        return "timeout"
    if "database is locked" in text or "database is busy" in text:
        return "locked"
    if "disk is full" in text or "no space left" in text or "disk full" in text:
        return "disk_full"
    if "connect" in text or "server closed" in text or "terminating connection" in text or (
            "shutting down" in text or "starting up" in text):
        return "unavailable"
    return "error"


def db_error_text(exc: BaseException) -> str:
    """The driver's own first line of a failed database call (its type's name if empty)."""
    orig = getattr(exc, "orig", None)
    return (
        str(orig if orig is not None else exc).strip().splitlines()[0]
        if str(exc)
        else type(exc).__name__
    )
