"""Window reads that go on from the last read answer what reading in full answers, bit for
bit: over a real store whose cycles come late, early, out of order, with series that
come and go, cycles cut into chunks, evicted past the memory window and dropped from a
full pending buffer (``storage/held_windows.py``)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuwarden.model import Sample, SeriesData, make_labels
from gpuwarden.storage import Store, held_windows, open_store
from gpuwarden.storage.held_windows import FORGET_AFTER_READS, HeldReads

NODE = "node-a"
T0 = 1_760_000_000.0
Exact = list[tuple[str, object, bytes, bytes]]


def exact(series: list[SeriesData]) -> Exact:
    return [(s.signal, s.labels, s.timestamps.tobytes(), s.values.tobytes()) for s in series]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    # Short spans and windows: a few hundred cycles reach cut blocks, evicted blocks and
    # the database; 8 pending cycles at most, so that a stretch without writes drops some.
    with open_store(f"sqlite:///{tmp_path / 's.db'}", node=NODE, chunk_span=20.0,
                    memory_window=40.0, cut_delay=5.0, max_pending_cycles=8) as opened:
        yield opened


def cycle(rng: random.Random, t: float, gpus: int) -> list[Sample]:
    out = []
    for gpu in range(gpus):
        if rng.random() < 0.1:
            continue  # a series missing from this cycle
        labels = make_labels(node=NODE, gpu=str(gpu))
        value = math.nan if rng.random() < 0.02 else rng.choice([0.0, 1.0, rng.random()])
        out.append(Sample("util", labels, value, t - rng.randint(0, 400) / 1000.0))
    out.append(Sample("kv", make_labels(node=NODE, server="s"), rng.random(), t))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_held_reads_answer_what_full_reads_answer(store: Store, seed: int) -> None:
    rng = random.Random(seed)
    held = HeldReads(store)
    t, gpus, outage = T0, 2, 0
    for step in range(400):
        t += rng.choice([1.0, 1.0, 1.0, 0.5, 3.0, 60.0 if rng.random() < 0.05 else 1.0])
        stamp = t
        if rng.random() < 0.03:
            stamp = t - rng.choice([0.5, 3.0])  # a cycle stamped before the last one
        elif rng.random() < 0.01:
            stamp = t + 20.0  # a clock ahead: samples newer than the next reads' end
        if rng.random() < 0.02:
            gpus = rng.choice([1, 2, 3, 4])  # a series comes (or is no longer written)
        store.append(cycle(rng, stamp, gpus))
        if outage:
            outage -= 1
        elif rng.random() < 0.03:
            outage = rng.randint(5, 15)  # no writes: the pending buffer drops cycles
        else:
            store.persist()
        ranges = {"util": (t - rng.choice([5.0, 30.0, 30.0, 60.0]), t)}
        if rng.random() < 0.7:
            ranges["kv"] = (t - rng.choice([10.0, 35.0]), t)
        if rng.random() < 0.05:
            ranges["none"] = (t - 30.0, t)  # nobody writes it
        got, failed = held.query_many(ranges)
        want, want_failed = store.query_many(ranges)
        assert failed == want_failed == {}
        for signal in ranges:
            assert exact(got[signal]) == exact(want[signal]), (step, signal)
    # It went on from what it held most of the time, or it saved nothing.
    assert held.held.held_reads_total > held.held.full_reads_total


def test_steady_reads_go_on_from_what_they_hold(tmp_path: Path) -> None:
    """A daemon's reads (its store's memory and cut delay): a minute every cycle, five
    minutes every fifth, cycles in order and written. After the first read of each
    signal, none is a full one, through the chunk cuts at every 4 minutes."""
    rng = random.Random(1)
    with open_store(f"sqlite:///{tmp_path / 's.db'}", node=NODE, cut_delay=60.0) as store:
        held = HeldReads(store)
        for k in range(600):
            t = T0 + k
            store.append(cycle(rng, t, 2))
            store.persist()
            lookback = 300.0 if k % 5 == 0 else 60.0
            ranges = {"util": (t - lookback, t), "kv": (t - lookback, t)}
            got, _ = held.query_many(ranges)
            want, _ = store.query_many(ranges)
            assert {s: exact(v) for s, v in got.items()} == {
                s: exact(v) for s, v in want.items()}
        assert store.chunks_written_total > 0
    assert held.held.full_reads_total == 2
    assert held.held.held_reads_total == 2 * 599


def test_what_is_read_from_the_database_or_no_longer_read_is_not_held(store: Store) -> None:
    """A window older than the head (read from the database) holds nothing; a signal no
    reader asks for any more is let go within twice FORGET_AFTER_READS reads."""
    rng = random.Random(2)
    held = HeldReads(store)
    for k in range(120):  # the fixture's head keeps 40 s: two minutes reach the database
        store.append(cycle(rng, T0 + k, 2))
        store.persist()
    now = T0 + 119
    held.query_many({"util": (now - 10.0, now), "kv": (now - 10.0, now)})
    assert held.held.signals == {"util", "kv"}
    got, _ = held.query_many({"util": (now - 10.0, now), "kv": (now - 100.0, now)})
    want, _ = store.query_many({"kv": (now - 100.0, now)})
    assert exact(got["kv"]) == exact(want["kv"]) and len(got["kv"][0]) > 60
    assert held.held.signals == {"util"}
    for _ in range(2 * FORGET_AFTER_READS):
        held.query_many({"kv": (now - 10.0, now)})
    assert held.held.signals == {"kv"}


def test_held_samples_stay_within_their_budget(store: Store,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A window that outgrows the budget is let go and read anew, the others held."""
    monkeypatch.setattr(held_windows, "HELD_BYTES_MAX", 24 * 120)  # 120 samples
    rng = random.Random(3)
    held = HeldReads(store)
    seen_util_held = False
    for k in range(40):  # 4 GPUs' "util" fill 30 s: 120 samples, then 4 more a cycle
        t = T0 + k
        store.append(cycle(rng, t, 4))
        store.persist()
        ranges = {"util": (t - 30.0, t), "kv": (t - 30.0, t)}
        got, _ = held.query_many(ranges)
        want, _ = store.query_many(ranges)
        assert {s: exact(v) for s, v in got.items()} == {s: exact(v) for s, v in want.items()}
        assert held.held.held_bytes <= held_windows.HELD_BYTES_MAX
        seen_util_held |= "util" in held.held.signals
    assert seen_util_held  # while it fitted
    assert held.held.signals == {"kv"}


@pytest.mark.parametrize("budget_samples", range(30, 90, 4))
def test_reads_at_two_cadences_over_their_budget(store: Store, budget_samples: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's reads: one signal every cycle, another every fifth over a wider window,
    so that the two go on from different cycles. When going on with the first takes the
    held samples over the budget, letting the widest go must not drop the second before
    it is answered (it raised KeyError: 'kv' there, and the cycle read everything anew)."""
    monkeypatch.setattr(held_windows, "HELD_BYTES_MAX", 24 * budget_samples)
    rng = random.Random(4)
    held = HeldReads(store)
    for k in range(60):
        t = T0 + k
        store.append(cycle(rng, t, 4))
        store.persist()
        ranges = {"util": (t - 5.0, t)}
        if k % 5 == 0:
            ranges["kv"] = (t - 35.0, t)
        got, failed = held.query_many(ranges)
        want, _ = store.query_many(ranges)
        assert failed == {}
        assert {s: exact(v) for s, v in got.items()} == {s: exact(v) for s, v in want.items()}
        assert held.held.held_bytes <= held_windows.HELD_BYTES_MAX
    assert held.held.held_reads_total > held.held.full_reads_total
