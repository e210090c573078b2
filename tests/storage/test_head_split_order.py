"""Gathered.split orders and filters samples exactly as it did with one ``np.lexsort`` over
(seconds, target) after a seconds filter: the one-key stable sort (``series_order``),
the linear sort by target of samples already in time order (``by_target_if_in_time``,
over the head's pieces taken oldest first), the skipped filter when every sample is
inside every range, and chunks trimmed to a request's millisecond bounds before the
filter change no answer, ties, duplicates, clock steps and timestamps of any size
included."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.model import SeriesData
from gpuwarden.storage import codec
from gpuwarden.storage.head import Gathered, Wanted, by_target_if_in_time, series_order
from gpuwarden.storage.queries import ms_bounds

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def reference_split(got: Gathered, wanted: Sequence[Wanted]) -> list[list[SeriesData]]:
    """``Gathered.split`` as it was (one filter in seconds, one lexsort)."""
    out: list[list[SeriesData]] = [[] for _ in wanted]
    if not got.ts:
        return out
    tgt = np.concatenate(got.targets)
    secs = np.concatenate(got.ts) / 1000.0
    vals = np.concatenate(got.vals)
    if len(wanted) == 1:
        keep = (secs >= wanted[0].start) & (secs <= wanted[0].end)
    else:
        counts = [len(w.keys) for w in wanted]
        starts = np.repeat([w.start for w in wanted], counts)
        ends = np.repeat([w.end for w in wanted], counts)
        keep = (secs >= starts[tgt]) & (secs <= ends[tgt])
    tgt, secs, vals = tgt[keep], secs[keep], vals[keep]
    srt = np.lexsort((secs, tgt))
    tgt, secs, vals = tgt[srt], secs[srt], vals[srt]
    if not tgt.size:
        return out
    heads = np.concatenate(([0], np.flatnonzero(tgt[1:] != tgt[:-1]) + 1))
    firsts = np.cumsum([0, *(len(w.keys) for w in wanted)])
    which = np.searchsorted(firsts, tgt[heads], "right") - 1
    index = tgt[heads] - firsts[which]
    tails = [*heads[1:].tolist(), int(tgt.size)]
    for a, b, k, i in zip(heads.tolist(), tails, which.tolist(), index.tolist(), strict=True):
        w = wanted[k]
        out[k].append(SeriesData(w.signal, w.keys[i], secs[a:b], vals[a:b]))
    return out


def _plain(result: list[list[SeriesData]]) -> list[list[tuple[object, ...]]]:
    return [[(s.signal, s.labels, s.timestamps.tolist(), s.values.tolist()) for s in series]
            for series in result]


# Timestamps near T0 (ties and clock steps likely), and of every size the type allows.
near = st.integers(1_700_000_000_000 - 50, 1_700_000_000_000 + 50)
huge = st.one_of(st.integers(2**60, 2**60 + 3000), st.integers(-(2**60) - 3000, -(2**60)))
anywhere = st.one_of(near, huge, st.integers(I64_MIN, I64_MAX), st.integers(-(2**53), 2**53),
                     st.sampled_from([2**42 * 1000 - 1, 2**42 * 1000, -(2**42) * 1000]))
pieces = st.lists(st.lists(st.tuples(st.integers(0, 5), anywhere), min_size=1, max_size=20),
                  min_size=1, max_size=5)


def _gathered(raw: list[list[tuple[int, int]]], targets: int) -> Gathered:
    got = Gathered()
    for n, piece in enumerate(raw):
        got.targets.append(np.array([t % targets for t, _ in piece], dtype=np.int64))
        got.ts.append(np.array([ms for _, ms in piece], dtype=np.int64))
        got.vals.append(np.arange(len(piece), dtype=np.float64) + 100 * n)
    return got


@settings(max_examples=300, deadline=None)
@given(pieces)
def test_series_order_is_lexsort_by_target_then_seconds(raw: list[list[tuple[int, int]]]) -> None:
    got = _gathered(raw, 6)
    tgt, ms = np.concatenate(got.targets), np.concatenate(got.ts)
    assert series_order(tgt, ms).tolist() == np.lexsort((ms / 1000.0, tgt)).tolist()


@settings(max_examples=300, deadline=None)
@given(pieces)
def test_the_linear_sort_is_series_order_where_it_applies(
        raw: list[list[tuple[int, int]]]) -> None:
    got = _gathered(raw, 6)
    tgt, ms = np.concatenate(got.targets), np.concatenate(got.ts)
    fast = by_target_if_in_time(tgt, ms)
    srt = series_order(tgt, ms)
    if fast is not None:
        assert fast[1].tolist() == tgt[srt].tolist() and fast[2].tolist() == ms[srt].tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=6), st.integers(1, 7),
       st.lists(st.integers(0, 30), min_size=1, max_size=40), st.data())
def test_pages_gathered_newest_first_take_the_linear_sort(
        rows: list[int], targets: int, steps: list[int], data: st.DataObject) -> None:
    """Pieces as the head gives them: pages of rows x series, time-major, in time order,
    gathered newest first (one head run); the answer is the reference's, and the
    linear sort applies wherever no series has two samples in one millisecond."""
    got = Gathered()
    clock = 1_700_000_000_000
    stamps = itertools.cycle(steps)
    pages = []
    for n in rows:
        ts = np.empty((n, targets), np.int64)
        for r in range(n):
            for t in range(targets):
                ts[r, t] = clock + next(stamps)
            clock += 1000
        order = np.array(data.draw(st.permutations(range(targets))), dtype=np.int64)
        pages.append((np.tile(order, n), ts[:, order].reshape(-1)))
    for tgt, ms in reversed(pages):  # newest first, as add_head walks
        got.targets.append(tgt)
        got.ts.append(ms)
        got.vals.append(np.arange(ms.size, dtype=np.float64) + len(got.vals) * 1000)
    got.head_runs = [(0, len(pages))]
    wanted = [Wanted("s", [(("k", str(i)),) for i in range(targets)], -math.inf, math.inf)]
    assert _plain(got.split(wanted)) == _plain(reference_split(got, wanted))
    oldest = np.concatenate([ms for _, ms in pages]), np.concatenate([t for t, _ in pages])
    if all(s < 1000 for s in steps):  # each row within its second: in time order
        assert by_target_if_in_time(oldest[1], oldest[0]) is not None


@settings(max_examples=300, deadline=None)
@given(pieces, st.data())
def test_split_gives_what_it_gave_whichever_pieces_are_the_heads(
        raw: list[list[tuple[int, int]]], data: st.DataObject) -> None:
    got = _gathered(raw, 6)
    first = data.draw(st.integers(0, len(raw)))
    end = data.draw(st.integers(first, len(raw)))
    got.head_runs = [(first, end)] if end > first else []
    wanted = [Wanted("s", [(("k", str(i)),) for i in range(6)], -math.inf, math.inf)]
    assert _plain(got.split(wanted)) == _plain(reference_split(got, wanted))


bound = st.one_of(
    st.floats(1_700_000_000.0 - 0.06, 1_700_000_000.0 + 0.06),
    st.floats(allow_nan=False), st.sampled_from([-math.inf, math.inf, 0.0]))


@settings(max_examples=300, deadline=None)
@given(pieces, st.lists(st.tuples(st.integers(1, 3), bound, bound), min_size=1, max_size=3))
def test_split_gives_what_it_gave(raw: list[list[tuple[int, int]]],
                                  asks: list[tuple[int, float, float]]) -> None:
    wanted = [Wanted(f"sig{k}", [(("k", f"{k}.{i}"),) for i in range(n)], lo, hi)
              for k, (n, lo, hi) in enumerate(asks)]
    got = _gathered(raw, sum(len(w.keys) for w in wanted))
    assert _plain(got.split(wanted)) == _plain(reference_split(got, wanted))


# A request's range: ms_bounds takes finite milliseconds, or no start or no end.
finite_bound = st.one_of(st.floats(1_700_000_000.0 - 0.06, 1_700_000_000.0 + 0.06),
                         st.floats(-1e300, 1e300), st.just(0.0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(anywhere, min_size=1, max_size=30), min_size=1, max_size=4),
       st.one_of(finite_bound, st.just(-math.inf)), st.one_of(finite_bound, st.just(math.inf)))
def test_trimmed_chunks_give_what_whole_chunks_give(
    series: list[list[int]], start: float, end: float
) -> None:
    """Chunks trimmed to the request's ms bounds answer as the whole chunks do."""
    blobs, targets = [], []
    for k, stamps in enumerate(series):
        ts = np.array(sorted(stamps), dtype=np.int64)
        blobs.append(codec.encode_chunk(ts, np.arange(ts.size, dtype=np.float64) * 0.5 + k))
        targets.append(k)
    rows = list(zip(targets, blobs, strict=True))
    lo, hi = ms_bounds(start, end)
    trimmed, whole = Gathered(), Gathered()
    trimmed.add_chunks(rows, {k: k for k in targets}, lo, hi)
    whole.add_chunks(rows, {k: k for k in targets})
    wanted = Wanted("s", [(("k", str(k)),) for k in targets], start, end)
    assert _plain([trimmed.to_series("s", wanted.keys, start, end)]) == _plain(
        reference_split(whole, [wanted]))


def test_chunks_of_huge_timestamps_are_not_trimmed() -> None:
    """Seconds of this size are a second or more apart: a sample hundreds of ms before a
    request's ms bounds can still be inside its range in seconds, and must stay."""
    ms0 = 2**62
    start = ms0 / 1000.0
    ts = np.arange(ms0 - 1500, ms0 + 1500, 100, dtype=np.int64)
    rows = [(0, codec.encode_chunk(ts, np.arange(ts.size, dtype=np.float64)))]
    lo, hi = ms_bounds(start, math.inf)
    assert ((ts < lo) & (ts / 1000.0 >= start)).any()  # the case this is about
    trimmed, whole = Gathered(), Gathered()
    trimmed.add_chunks(rows, {0: 0}, lo, hi)
    whole.add_chunks(rows, {0: 0})
    wanted = Wanted("s", [(("k", "0"),)], start, math.inf)
    assert _plain([trimmed.to_series("s", wanted.keys, start, math.inf)]) == _plain(
        reference_split(whole, [wanted]))


def test_a_sample_at_the_start_of_a_whole_second_is_kept() -> None:
    ts = 1_700_000_000_000 + np.arange(-3, 4, dtype=np.int64)  # some outside the bounds
    rows = [(0, codec.encode_chunk(ts, np.arange(7, dtype=np.float64) - 1.0))]
    lo, hi = ms_bounds(1_700_000_000.0, 1_700_000_000.0)
    got = Gathered()
    got.add_chunks(rows, {0: 0}, lo, hi)
    (series,) = got.to_series("s", [(("k", "0"),)], 1_700_000_000.0, 1_700_000_000.0)
    assert series.timestamps.tolist() == [1_700_000_000.0] and series.values.tolist() == [2.0]
