"""Leader election on a real PostgreSQL: one leader, failover when its session ends, and
a fenced write refused to a leader whose session the server has ended."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from gpuwarden.fleet.leader import Leadership, NotLeader, current_leader

pytestmark = pytest.mark.postgres


@pytest.fixture
def engines(fleet_url: str) -> Iterator[list[Engine]]:
    made = [create_engine(fleet_url) for _ in range(3)]
    yield made
    for engine in made:
        engine.dispose()


def _terminate(engine: Engine, node: str) -> None:
    """End the leader's session from outside, as a server restart or a dead TCP peer would."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = :n"), {"n": f"gpuwarden-leader:{node}"})
        conn.commit()


def _within(seconds: float, attempt: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not attempt():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_one_leader_at_a_time_and_it_is_named(engines: list[Engine]) -> None:
    a, b, c = (Leadership(e, n) for e, n in zip(engines, "abc", strict=True))
    assert a.refresh() is True
    assert b.refresh() is False and c.refresh() is False
    assert a.refresh() is True  # stays leader pass after pass
    with engines[0].connect() as conn:
        assert current_leader(conn) == "a"
    a.step_down()
    assert b.refresh() is True
    assert c.refresh() is False
    with engines[0].connect() as conn:
        assert current_leader(conn) == "b"
    b.step_down()
    with engines[0].connect() as conn:
        assert current_leader(conn) is None


def test_a_leader_whose_session_ended_steps_down_and_another_takes_over(
        engines: list[Engine]) -> None:
    a, b = Leadership(engines[0], "a"), Leadership(engines[1], "b")
    assert a.refresh()
    _terminate(engines[2], "a")
    # The server releases the lock as the session ends (pg_terminate_backend only asks
    # it to end): b leads within moments, before a has noticed anything...
    assert _within(5.0, b.refresh)
    # ...and a's writes are refused by the fence, inside their transaction.
    with engines[0].connect() as conn, conn.begin(), pytest.raises(NotLeader):
        a.fence(conn)
    with engines[1].connect() as conn, conn.begin():
        b.fence(conn)  # the new leader's pass
    assert a.refresh() is False  # a notices on its next pass
    assert not a.is_leader
    b.step_down()
