"""Series identity: one local id per series however its labels are ordered, one database
row per (signal, canonical label JSON) however many times it is created."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from gpuwarden.model import labels_json, make_labels
from gpuwarden.storage import schema
from gpuwarden.storage.engine import open_engine, write_transaction
from gpuwarden.storage.series_registry import (
    SeriesRegistry,
    create_series,
    labels_from_json,
    load_series,
    stored_series,
    unique_ids,
)


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = open_engine("sqlite://")
    schema.create_tables(engine)
    yield engine
    engine.dispose()


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=6))
def test_labels_read_back_are_the_labels_written(labels: dict[str, str]) -> None:
    key = make_labels(labels)
    assert labels_from_json(labels_json(key)) == key
    assert labels_json(tuple(reversed(key))) == labels_json(key)


@given(st.lists(st.integers(-(2**40), 2**40), max_size=50))
def test_unique_ids_are_sorted_and_distinct(ids: list[int]) -> None:
    assert unique_ids(np.array(ids, dtype=np.int64)).tolist() == sorted(set(ids))


def test_one_local_id_per_series_whatever_the_label_order() -> None:
    registry = SeriesRegistry()
    key = ("gpu_up", make_labels(gpu="0", node="a"))
    lid = registry.register(key)
    assert registry.register(("gpu_up", tuple(reversed(key[1])))) == lid
    assert registry.register(("gpu_up", make_labels(gpu="1", node="a"))) == lid + 1
    assert registry.keys[lid] == key
    assert registry.matching("gpu_up", {"gpu": "1"}) == [lid + 1]
    assert registry.matching("gpu_temp", None) == []


def test_database_ids_survive_the_id_array_growing() -> None:
    registry = SeriesRegistry()
    first = registry.register(("s", make_labels(i="0")))
    registry.assign({first: 7})
    lids = [registry.register(("s", make_labels(i=str(i)))) for i in range(1, 3000)]
    assert registry.db_ids.size >= 3000 and registry.db_ids[first] == 7
    assert registry.local_of_db == {7: first}
    parts = [np.array([first, *lids[:5]], dtype=np.int64), np.array([lids[3]], dtype=np.int64)]
    assert registry.unassigned(parts) == sorted(lids[:5])
    assert registry.unassigned([np.array([first], dtype=np.int64)]) == []


def test_create_series_is_get_or_create_spelled_labels_json(engine: Engine) -> None:
    a, b = ("gpu_up", make_labels(gpu="0")), ("gpu_up", make_labels(gpu="1", model="é"))
    with write_transaction(engine) as conn:
        first = create_series(conn, {0: a, 1: b})
    with write_transaction(engine) as conn:
        again = create_series(conn, {5: b, 6: a})  # another node's local ids
    assert again == {5: first[1], 6: first[0]}
    with engine.connect() as conn:
        stored = stored_series(conn, "gpu_up")
        assert sorted(stored) == sorted([(first[0], a), (first[1], b)])
        assert load_series(conn, [first[1], 999]) == {first[1]: b}
        assert stored_series(conn, "other") == []
        spelled = sorted(conn.execute(schema.series.select()).all())
    assert [r.labels for r in spelled] == [labels_json(a[1]), labels_json(b[1])]


def test_stored_series_are_registered_under_their_database_ids() -> None:
    registry = SeriesRegistry()
    key = ("gpu_up", make_labels(gpu="0"))
    registry.register(("other", ()))
    registry.register_stored({41: key})
    lid = registry.local[key]
    assert registry.db_ids[lid] == 41 and registry.local_of_db == {41: lid}


def test_series_read_back_share_their_label_strings(engine: Engine) -> None:
    """Every series of the first cycle comes back from the database (storage/early.py
    writes it before the store opens), and the registry keeps each key for the process's
    life: read back, the keys hold one copy of each shared name, value and (name, value)
    pair, and one key tuple per series. 5,000 bucket series of 4 servers cost ~270 bytes
    each in the registry (1,040 when each key held its own strings and pairs, and a
    second, sorted tuple)."""
    keys = {i: ("itl_seconds_bucket",
                make_labels(node="gpu-node-01", server=f"vllm-{i // 50 % 4}",
                            model=f"lora-{i // 200}", le=str(0.001 * (i % 50))))
            for i in range(5000)}
    with write_transaction(engine) as conn:
        ids = create_series(conn, keys)
    with engine.connect() as conn:
        tracemalloc.start()
        try:
            found = load_series(conn, sorted(ids.values()))
            registry = SeriesRegistry()
            registry.register_stored(found)
            del found
            per_series = tracemalloc.get_traced_memory()[0] / len(keys)
        finally:
            tracemalloc.stop()
    assert sorted(registry.keys) == sorted(keys.values())
    assert len(registry.local) == len(keys)  # no second spelling of an ordered key
    nodes = {id(dict(labels)["node"]) for _, labels in registry.keys}
    assert len(nodes) == 1
    assert per_series < 400, f"{per_series:.0f} bytes a series"
