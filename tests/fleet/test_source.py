"""Every node's samples read back from a shared PostgreSQL store for the fleet rules:
the head log and the chunks of each node, each sample exactly once."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import text

from gpuwarden.fleet.nodes import NodeBeat
from gpuwarden.fleet.source import SILENCE_SIGNAL, FleetSource
from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import open_store

pytestmark = pytest.mark.postgres
T0 = 1_700_000_000.0


def _write(url: str, node: str, cycles: int, *, cut: bool) -> None:
    store = open_store(url, node=node)
    try:
        for i in range(cycles):
            ts = T0 + i
            store.write([
                Sample("gpu_utilization_ratio", make_labels(node=node, gpu="0", uuid="u",
                                                            model="m"), 0.1 * (i % 10), ts),
                Sample("kv_cache_usage_ratio", make_labels(node=node, server="s", model="m"),
                       0.5, ts),
            ])
        if cut:
            store.flush()  # cuts the head into chunks and deletes the head-log rows
    finally:
        store.close()


def test_reads_every_node_from_head_log_and_chunks_each_sample_once(fleet_url: str) -> None:
    _write(fleet_url, "node-a", 30, cut=True)
    _write(fleet_url, "node-b", 30, cut=False)
    engine = open_store(fleet_url, node="reader").engine
    with engine.connect() as conn:  # where each node's samples are: the test's premise
        writers = conn.execute(text("SELECT DISTINCT writer FROM head_log")).scalars().all()
        assert writers == ["node-b"]
        assert conn.execute(text("SELECT count(*) FROM chunks")).scalar_one() > 0
    source = FleetSource(engine, time.time)
    got, failed = source.query_many({"gpu_utilization_ratio": (T0, T0 + 29),
                                     "kv_cache_usage_ratio": (T0 + 10, T0 + 19)})
    assert failed == {}
    util = {s.label_map["node"]: s for s in got["gpu_utilization_ratio"]}
    assert sorted(util) == ["node-a", "node-b"]
    for series in util.values():
        assert series.timestamps.tolist() == [T0 + i for i in range(30)]
        assert np.allclose(series.values, [0.1 * (i % 10) for i in range(30)])
    kv = got["kv_cache_usage_ratio"]
    assert [len(s) for s in kv] == [10, 10]
    only_b = source.query("gpu_utilization_ratio", {"node": "node-b"}, T0, T0 + 5)
    assert [s.label_map["node"] for s in only_b] == ["node-b"]
    assert len(only_b[0]) == 6


def test_silence_is_counted_in_each_nodes_own_intervals(fleet_url: str) -> None:
    engine = open_store(fleet_url, node="reader").engine
    now = [T0]
    fast = NodeBeat(engine, "fast", "test", 1.0, clock=lambda: now[0])
    slow = NodeBeat(engine, "slow", "test", 10.0, clock=lambda: now[0])
    gone = NodeBeat(engine, "gone", "test", 1.0, clock=lambda: now[0])
    for beat in (fast, slow, gone):
        beat.beat()
    gone.stopped()
    now[0] = T0 + 20
    source = FleetSource(engine, lambda: now[0])
    silence = {s.label_map["node"]: float(s.values[-1])
               for s in source.query(SILENCE_SIGNAL, None, T0, now[0])}
    assert silence == {"fast": 20.0, "slow": 2.0}  # a clean stop is not silence
    gone.beat()  # it came back
    back = {s.label_map["node"] for s in source.query(SILENCE_SIGNAL, None, T0, now[0])}
    assert back == {"fast", "slow", "gone"}


def test_a_cycle_written_twice_counts_once(fleet_url: str) -> None:
    """A commit whose acknowledgement was lost is retried: the same cycle, two rows."""
    _write(fleet_url, "node-a", 5, cut=False)
    engine = open_store(fleet_url, node="reader").engine
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO head_log (writer, t_min, t_max, count, data) "
                          "SELECT writer, t_min, t_max, count, data FROM head_log"))
        assert conn.execute(text("SELECT count(*) FROM head_log")).scalar_one() == 10
    series = FleetSource(engine, time.time).query("gpu_utilization_ratio")
    assert [s.timestamps.tolist() for s in series] == [[T0 + i for i in range(5)]]
