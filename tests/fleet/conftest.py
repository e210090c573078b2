"""A fresh PostgreSQL database per fleet test, on the server ``GPUWARDEN_TEST_POSTGRES_URL``
names (the local one in CI): several daemons share it as a fleet shares its store.

Without the variable the tests are skipped with the reason, and CI
(``GPUWARDEN_FAIL_ON_SKIP=1``) fails on such skips. ``GW_KEEP_DB=1`` keeps the database
after the test, to read what the fleet wrote (its name is in each daemon's config).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

PG_ENV = "GPUWARDEN_TEST_POSTGRES_URL"


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def fleet_url() -> Iterator[str]:
    """A storage URL of a database created for the test, dropped afterwards."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    name = f"gw_fleet_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_conninfo(base), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_conninfo(base), autocommit=True) as conn:
            if not os.environ.get("GW_KEEP_DB"):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
