"""Failed writes are counted by a reason a user can act on, reported by the driver's line."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from gpuwarden.storage.db_errors import db_error_text, write_error_reason


def wrapped(message: str) -> OperationalError:
    return OperationalError("INSERT INTO head_log ...", {}, sqlite3.OperationalError(message))


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("database is locked", "locked"),
        ("canceling statement due to statement timeout", "timeout"),
        ("canceling statement due to lock timeout", "timeout"),
        ("database or disk is full", "disk_full"),
        ("could not write: No space left on device", "disk_full"),
        ("connection refused", "unavailable"),
        ("server closed the connection unexpectedly", "unavailable"),
        ("terminating connection due to administrator command", "unavailable"),
        ("the database system is starting up", "unavailable"),
        ("no such table: head_log", "error"),
    ],
)
def test_reason_of_a_driver_error(message: str, reason: str) -> None:
    assert write_error_reason(wrapped(message)) == reason


def test_timeout_error_is_a_timeout() -> None:
    assert write_error_reason(TimeoutError()) == "timeout"


def test_text_is_the_drivers_first_line() -> None:
    assert db_error_text(wrapped("database is locked\nDETAIL: more")) == "database is locked"
    assert db_error_text(TimeoutError()) == "TimeoutError"
