"""Window reads answered from one batched read of the widest window of each signal.

Why: the rules and the window signals each read what they need every few seconds, over
the same minute of the same series (the TTFT and ITL buckets, the KV cache...). A store
gathers and sorts a signal's samples once per read (``Store.query_many``), so two
readers of one cycle that read apart gather twice. A :class:`Prefetched` made once per
cycle, from every reader's ranges, reads each signal once, over the widest range asked;
each reader's ``query`` or ``query_many`` of a narrower range gets those series cut to
it: what the source would answer for that range alone (``in_window``), so every reader
sees what it saw before (``tests/incidents/test_batched_reads.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

from gpuwarden.model import SeriesData
from gpuwarden.promql.aggregation import in_window


class SeriesSource(Protocol):
    """What a window reader reads: the store, or anything answering as it does."""

    def query(self, signal: str, matchers: None = None, start: float = ...,
              end: float = ...) -> list[SeriesData]: ...


def widest(*lookbacks: Mapping[str, float]) -> dict[str, float]:
    """Per signal, the longest of the lookbacks (seconds) any of the maps asks for."""
    out: dict[str, float] = {}
    for each in lookbacks:
        for signal, lookback in each.items():
            out[signal] = max(out.get(signal, 0.0), lookback)
    return out


def read_ranges(source: SeriesSource, ranges: Mapping[str, tuple[float, float]]
                ) -> dict[str, list[SeriesData] | Exception]:
    """Per signal its series over its range, or the error reading it raised: in one
    ``query_many`` where the source has one, else a ``query`` per signal."""
    out: dict[str, list[SeriesData] | Exception] = {}
    if not ranges:
        return out
    many = getattr(source, "query_many", None)
    if many is not None:
        got, failed = many(ranges)
        out.update(got)
        out.update(failed)
        return out
    for signal, (start, end) in ranges.items():
        try:
            out[signal] = source.query(signal, None, start, end)
        except Exception as exc:
            out[signal] = exc
    return out


class Prefetched:
    """Each signal of ``lookbacks`` read once, over ``[now - lookback, now]``, from
    ``source`` (:func:`read_ranges`); ``query`` and ``query_many`` answer from that what
    the source would: the series with samples in the range asked, cut to it. A signal
    not read up front, or a range outside what was read, is read from the source. A
    signal's read error is raised (``query``) or handed back (``query_many``) as the
    source's own read would."""

    def __init__(self, source: SeriesSource, lookbacks: Mapping[str, float],
                 now: float) -> None:
        self._source = source
        self._ranges = {name: (now - lookback, now) for name, lookback in lookbacks.items()}
        self._got = read_ranges(source, self._ranges)

    def _holds(self, signal: str, start: float, end: float) -> bool:
        held = self._ranges.get(signal)
        return held is not None and held[0] <= start and end <= held[1]

    def _cut(self, signal: str, start: float, end: float) -> list[SeriesData] | Exception:
        got = self._got[signal]
        if isinstance(got, Exception) or self._ranges[signal] == (start, end):
            return got
        out = []
        for s in got:
            ts, vs = in_window(s, start, end)
            if ts.size:
                out.append(SeriesData(s.signal, s.labels, ts, vs))
        return out

    def query(self, signal: str, matchers: Mapping[str, str] | None = None,
              start: float = -math.inf, end: float = math.inf) -> list[SeriesData]:
        """The series of ``signal`` with samples in ``[start, end]``, cut to it; with
        ``matchers``, those whose labels have each of them (exact values)."""
        got = (self._cut(signal, start, end) if self._holds(signal, start, end)
               else self._source.query(signal, None, start, end))
        if isinstance(got, Exception):
            raise got
        if matchers:
            want = matchers.items()
            return [s for s in got if want <= s.label_map.items()]
        return got

    def query_many(
        self, ranges: Mapping[str, tuple[float, float]]
    ) -> tuple[dict[str, list[SeriesData]], dict[str, Exception]]:
        """Like ``Store.query_many``: per signal its series over its range, or the error
        reading it raised; what was not read up front is read from the source in one go."""
        rest = {signal: bounds for signal, bounds in ranges.items()
                if not self._holds(signal, *bounds)}
        answers = read_ranges(self._source, rest)
        for signal, (start, end) in ranges.items():
            if signal not in rest:
                answers[signal] = self._cut(signal, start, end)
        got = {s: a for s, a in answers.items() if not isinstance(a, Exception)}
        failed = {s: a for s, a in answers.items() if isinstance(a, Exception)}
        return got, failed
