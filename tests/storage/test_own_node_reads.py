"""Reads of the node's own series over a window the head covers touch no database, even
for a signal the head has no series of (``queries.plan``); an older window, or a read
naming another node, still reads the database, and every answer is what was written.

Why it holds (``Store._cover_ms``): the store is its node's only writer, its replay
loads every uncut head-log row of the node, and a block leaves memory only with the
cover moved past its samples: every sample of the node at or after the cover is in the
head, so an empty head answer there is the database's answer too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import Store
from tests.storage.conftest import T0, Backend, backend

__all__ = ["backend"]

ABSENT = "gpu_xid_errors_total"  # never written by the stores below


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    """The SQL statements run on the store's engine while the block runs."""
    seen: list[str] = []

    def count(conn: object, cursor: object, statement: str, *rest: object) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


def _cycle(node: str, k: int) -> list[Sample]:
    return [Sample("kv_cache_usage_ratio", make_labels(node=node, server=f"s{s}"),
                   k + s / 10, T0 + k) for s in range(3)]


def _fill(store: Store, cycles: int, start: int = 0) -> None:
    for k in range(start, start + cycles):
        store.write(_cycle(store.node, k))


def test_an_absent_signal_in_a_covered_window_reads_no_database(backend: Backend) -> None:
    store = backend.open(chunk_span=30.0, memory_window=60.0)
    _fill(store, 200)  # cut blocks evicted: the cover is past T0
    now = T0 + 199
    with statements(store) as seen:
        got, failed = store.query_many({ABSENT: (now - 30, now),
                                         "kv_cache_usage_ratio": (now - 30, now)})
        alone = store.query(ABSENT, None, now - 30, now)
        own = store.query(ABSENT, {"node": "node-a"}, now - 30, now)
    assert seen == []
    assert failed == {} and got[ABSENT] == [] and alone == [] and own == []
    assert len(got["kv_cache_usage_ratio"]) == 3


def test_a_fresh_store_answers_an_absent_signal_without_the_database(backend: Backend) -> None:
    store = backend.open()  # nothing cut yet: the head holds all there is
    _fill(store, 5)
    with statements(store) as seen:
        assert store.query(ABSENT) == []
    assert seen == []


def test_an_uncovered_window_still_reads_the_database(backend: Backend) -> None:
    store = backend.open(chunk_span=30.0, memory_window=60.0)
    _fill(store, 200)
    with statements(store) as seen:
        got, failed = store.query_many({ABSENT: (T0, T0 + 199),
                                         "kv_cache_usage_ratio": (T0, T0 + 199)})
    assert seen  # both reach before the cover: the database answers them
    assert failed == {} and got[ABSENT] == []
    assert [s.timestamps.size for s in got["kv_cache_usage_ratio"]] == [200, 200, 200]


def test_a_read_naming_another_node_still_reads_the_database(backend: Backend) -> None:
    other = backend.open(node="node-b", chunk_span=30.0, memory_window=60.0)
    _fill(other, 100)
    other.flush()  # node-b's samples are chunks in the database
    mine = backend.open(chunk_span=30.0, memory_window=60.0)
    _fill(mine, 5, start=100)
    with statements(mine) as seen:
        got = mine.query("kv_cache_usage_ratio", {"node": "node-b"}, T0 + 90, T0 + 99)
        own = mine.query("kv_cache_usage_ratio", None, T0 + 100, T0 + 104)
    assert seen  # the read of node-b's series went to the database
    assert [s.labels for s in got] == [make_labels(node="node-b", server=f"s{s}")
                                       for s in range(3)]
    assert [s.timestamps.tolist() for s in got] == [[T0 + k for k in range(90, 100)]] * 3
    assert {dict(s.labels)["node"] for s in own} == {"node-a"}


def test_a_reopened_store_answers_from_its_replayed_head(backend: Backend) -> None:
    """After a restart the cover is where the chunks end and the rest is replayed from
    the head log: a covered window needs no database, and gives what was written,
    including a signal the new store has not written yet itself."""
    first = backend.open(chunk_span=30.0, memory_window=60.0)
    _fill(first, 100)
    first.write([Sample("quality_similarity", make_labels(node="node-a", server="s0"),
                        0.5, T0 + 99)])
    first.close()  # not flushed: the uncut cycles stay in the head log
    second = backend.open(chunk_span=30.0, memory_window=60.0)
    with statements(second) as seen:
        covered, _ = second.query_many({"quality_similarity": (T0 + 95, T0 + 99),
                                        ABSENT: (T0 + 95, T0 + 99)})
    assert seen == []
    assert [s.values.tolist() for s in covered["quality_similarity"]] == [[0.5]]
    assert covered[ABSENT] == []
    with statements(second) as seen:
        older = second.query("kv_cache_usage_ratio", None, T0, T0 + 99)
    assert seen
    assert [s.timestamps.size for s in older] == [100, 100, 100]
