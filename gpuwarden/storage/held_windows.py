"""The daemon's window reads, each answered from the last one plus the cycles since.

Why: every 5 s the rules and the window signals read 37 signals over 1-20 minutes
(~54,000 samples at 4 servers), and 55 of every 60 seconds of a minute's window had been
gathered, decoded, sorted and split 5 s before. Reading it all anew was about a quarter
of the daemon's CPU at 4 servers (py-spy; README's performance section). A
:class:`HeldWindows` keeps each signal's last answer and adds what the head's cycles
appended since then hold, then cuts it to the window asked.

It answers bit for bit what ``Store.query_many`` answers over the same head
(``tests/storage/test_held_windows.py``, and the incident traces of
``tests/incidents/test_batched_reads.py``), because it goes on from a held answer only
where the two cannot differ, and reads in full otherwise:

- the head lost no cycle since (``HeadMark.removals``: the pending buffer drops
  cycles when the store is unwritable too long) and its newest cycles are exactly the
  ones appended since (``HeadMark.appended``, and the held mark's last cycle just before
  them, by identity). A chunk cut moves cycles into blocks without changing a sample;
- every sample appended since is newer than every sample the head held then, and each
  cycle's than every earlier cycle's, so each series is its held samples followed by its
  new ones, none at the same time as another (no out-of-order cycle: two samples of one
  series at one time come in the order they were gathered in, which a chunk cut or a
  page changes; a held answer with such a tie is not kept either);
- every sample in the head is inside the end of the window asked (a sample left out
  for being too new would be missed later);
- the signal has the same series (a new one or a deleted one: in full), and the window
  starts no earlier than the held samples reach (they are every sample from their start
  on, up to their end).

A signal read over several lookbacks (a rule every cycle over a minute, another every
5 s over ten) keeps the widest one's samples, plus a second of margin so that
``now - lookback`` rounding differently from one read to the next does not force a full
read; each answer is cut to its own window. The held samples are the widest windows' own,
24 bytes a sample (~2.4 MiB at 8 GPUs and 4 servers of the recorded payload), kept between reads
where a full read gathered them anew each time and let them go: so at most
:data:`HELD_BYTES_MAX` are held, the widest windows let go first and read anew (a node of
~300 KB payloads would hold ~30 MiB, which its resident memory cannot spare). A signal
read from the database (a window older than the head) is not held, nor one no longer
read (:data:`FORGET_AFTER_READS`).

Pure, like ``head.py``: the store hands over its head under its lock (``Store.query_held``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gpuwarden.model import Labels, SeriesData
from gpuwarden.storage.codec import F64Array, I64Array
from gpuwarden.storage.head import Block, Entry, Gathered, Wanted
from gpuwarden.storage.queries import Request, from_head, ms_bounds

Answers = tuple[dict[str, list[SeriesData]], Mapping[str, Exception]]

#: Seconds held before the widest window's start (module doc: float rounding of starts).
MARGIN_S = 1.0
#: Samples older than every window are dropped once they reach back this share of the
#: widest window: a copy of the held arrays every few reads, not every read.
COMPACT_AFTER = 0.1
#: Bytes of samples held at most, over every signal: beyond it a signal is read anew
#: each time rather than held (24 bytes a sample; 8 GPUs and 4 servers of the recorded
#: vLLM payload hold ~2.4 MiB, a node of ~300 KB payloads would hold ~30 MiB).
HELD_BYTES_MAX = 3 << 20
#: A signal not read in this many reads is no longer held (a rule removed by a reload):
#: its samples, and the head's cycles its mark keeps alive, are let go (looked for every
#: this many reads, so within twice as many).
FORGET_AFTER_READS = 300


@dataclass(frozen=True, slots=True)
class HeadMark:
    """Where the head stood at a read: its newest cycle and how many were appended and
    dropped before then, and its newest sample's time (ms)."""

    last: Entry | None
    appended: int
    removals: int
    newest_ms: int


@dataclass(slots=True, eq=False)
class _Held:
    """A signal's samples: every sample of its series with ``start <= t <= end``, as of
    ``mark``, as flat arrays ordered by target (index in ``local``), then time."""

    local: list[int]
    keys: list[Labels]
    start: float
    end: float
    lookback: float  # the widest window read lately
    mark: HeadMark
    read_at: int  # HeldWindows.reads_total when last read
    tgt: I64Array
    secs: F64Array
    vals: F64Array

    @property
    def nbytes(self) -> int:
        return self.tgt.nbytes + self.secs.nbytes + self.vals.nbytes


def _appended_since(entries: Sequence[Entry], then: HeadMark, now: HeadMark
                    ) -> Sequence[Entry] | None:
    """The cycles appended between ``then`` and ``now`` (``entries`` as of ``now``), or None
    where an answer held at ``then`` cannot go on (module doc)."""
    if then.last is None or then.removals != now.removals:
        return None
    k = now.appended - then.appended
    if k < 0 or len(entries) < k + 1 or entries[len(entries) - k - 1] is not then.last:
        return None
    new = entries[len(entries) - k:]
    newest = then.newest_ms
    for e in new:  # each cycle after every sample before it: no two samples tie
        if e.t_min <= newest:
            return None
        newest = e.t_max
    return new


Flat = tuple[I64Array, F64Array, F64Array]  # (target, seconds, value) of samples


def _merged(held: Flat, added: Flat) -> Flat:
    """Held and added samples, both ordered by target then time, as one such ordering:
    each added sample after the held ones of its target (they are newer)."""
    (tgt, secs, vals), (add_tgt, add_secs, add_vals) = held, added
    n, m = tgt.size, add_tgt.size
    at_new = np.searchsorted(tgt, add_tgt, "right") + np.arange(m)
    at_old = np.ones(n + m, bool)
    at_old[at_new] = False
    out_t = np.empty(n + m, np.int64)
    out_s = np.empty(n + m, np.float64)
    out_v = np.empty(n + m, np.float64)
    out_t[at_new], out_s[at_new], out_v[at_new] = add_tgt, add_secs, add_vals
    out_t[at_old], out_s[at_old], out_v[at_old] = tgt, secs, vals
    return out_t, out_s, out_v


def _series(signal: str, keys: Sequence[Labels], held: _Held, start: float
            ) -> list[SeriesData]:
    """The held samples from ``start`` on, one SeriesData per target: views of the held
    arrays (each target's samples before ``start`` are a prefix of its run)."""
    tgt, secs, vals = held.tgt, held.secs, held.vals
    if not tgt.size:
        return []
    heads = np.concatenate(([0], np.flatnonzero(tgt[1:] != tgt[:-1]) + 1))
    tails = np.append(heads[1:], tgt.size)
    firsts = tails - np.add.reduceat(secs >= start, heads) if start > held.start else heads
    return [SeriesData(signal, keys[t], secs[a:b], vals[a:b])
            for a, b, t in zip(firsts.tolist(), tails.tolist(), tgt[heads].tolist(),
                               strict=True) if a < b]


class HeldWindows:
    """Each signal's last answer, and how to answer the next read from it (module doc).

    One reader's: the daemon's cycle, whose reads come one after another.
    """

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}
        self.held_bytes = 0  # of every signal's samples, at most HELD_BYTES_MAX
        self.reads_total = 0
        self.full_reads_total = 0  # signals read in full (first read, or could not go on)
        self.held_reads_total = 0  # signals answered from what was held

    def read(self, entries: Sequence[Entry], blocks: Sequence[Block],
             requests: Sequence[Request], mark: HeadMark) -> list[list[SeriesData]]:
        """Per request its series, what ``from_head(entries, blocks, requests)`` gives;
        ``mark`` is where the head stood when ``entries`` and ``blocks`` were taken."""
        self.reads_total += 1
        if self.reads_total % FORGET_AFTER_READS == 0:
            self.drop([signal for signal, held in self._held.items()
                       if self.reads_total - held.read_at >= FORGET_AFTER_READS])
        out: list[list[SeriesData]] = [[] for _ in requests]
        full: list[int] = []
        since: dict[int, Sequence[Entry] | None] = {}  # by id of the held mark
        going_on: dict[int, list[int]] = {}  # held mark's id -> requests going on from it
        within_end = mark.newest_ms / 1000.0
        for k, r in enumerate(requests):
            held = self._held.get(r.signal)
            if (held is None or held.local != r.local or r.start < held.start
                    or within_end > r.end or r.end < held.end):
                full.append(k)
                continue
            key = id(held.mark)
            if key not in since:
                since[key] = _appended_since(entries, held.mark, mark)
            if since[key] is None:
                full.append(k)
            else:
                going_on.setdefault(key, []).append(k)
        if full:
            answers = self._read_full(entries, blocks, [requests[k] for k in full], mark)
            for k, answer in zip(full, answers, strict=True):
                out[k] = answer
        for key, members in going_on.items():
            new = since[key]
            assert new is not None
            answers = self._go_on(new, [requests[k] for k in members], mark)
            for k, answer in zip(members, answers, strict=True):
                out[k] = answer
        # Only once every group went on: a window let go within the loop could be one
        # that a later group goes on from.
        self._keep_within_budget()
        return out

    @property
    def signals(self) -> frozenset[str]:
        """The signals held now."""
        return frozenset(self._held)

    def forget(self) -> None:
        """Hold nothing: the next read of every signal is a full one."""
        self._held.clear()
        self.held_bytes = 0

    def drop(self, signals: Iterable[str]) -> None:
        """No longer hold ``signals`` (read from the database this time, or not read)."""
        for signal in signals:
            held = self._held.pop(signal, None)
            if held is not None:
                self.held_bytes -= held.nbytes

    def _read_full(self, entries: Sequence[Entry], blocks: Sequence[Block],
                   requests: Sequence[Request], mark: HeadMark) -> list[list[SeriesData]]:
        self.full_reads_total += len(requests)
        answers = from_head(entries, blocks, requests)
        for r, series in zip(requests, answers, strict=True):
            self.drop((r.signal,))
            if mark.newest_ms / 1000.0 > r.end or not all(
                    s.timestamps.size < 2 or bool((s.timestamps[1:] > s.timestamps[:-1]).all())
                    for s in series):
                continue  # it left out samples too new, or a series has two samples at one
                # time (their order is the gathering's, which a cut can change)
            if self.held_bytes + 24 * sum(len(s) for s in series) > HELD_BYTES_MAX:
                continue
            index = {labels: t for t, labels in enumerate(r.keys)}
            counts = [len(s) for s in series]
            tgt = np.repeat(np.array([index[s.labels] for s in series], np.int64), counts)
            secs = (np.concatenate([s.timestamps for s in series]) if series
                    else np.empty(0, np.float64))
            vals = (np.concatenate([s.values for s in series]) if series
                    else np.empty(0, np.float64))
            held = self._held[r.signal] = _Held(r.local, r.keys, r.start, r.end,
                                                r.end - r.start, mark, self.reads_total,
                                                tgt, secs, vals)
            self.held_bytes += held.nbytes
        return answers

    def _go_on(self, new: Sequence[Entry], requests: Sequence[Request], mark: HeadMark
               ) -> list[list[SeriesData]]:
        """Answer ``requests`` from their held samples and the cycles ``new``."""
        self.held_reads_total += len(requests)
        helds = [self._held[r.signal] for r in requests]
        keeps = []
        for r, held in zip(requests, helds, strict=True):
            held.lookback = max(held.lookback, r.end - r.start)
            keeps.append(max(held.start, min(r.start, r.end - held.lookback - MARGIN_S)))
        if new:
            got = Gathered()
            lids = [lid for r in requests for lid in r.local]
            got.add_head(new, lids, min(ms_bounds(h.start, math.inf)[0] for h in helds),
                         max(r.hi for r in requests))
            new_tgt, new_secs, new_vals = got.ordered(
                [Wanted(r.signal, r.keys, held.start, r.end)
                 for r, held in zip(requests, helds, strict=True)])
            firsts = np.cumsum([0, *(len(r.local) for r in requests)])
            bounds = np.searchsorted(new_tgt, firsts).tolist()
        answers = []
        for k, (r, held, keep) in enumerate(zip(requests, helds, keeps, strict=True)):
            tgt, secs, vals = held.tgt, held.secs, held.vals
            start = held.start
            if new and bounds[k] < bounds[k + 1]:
                a, b = bounds[k], bounds[k + 1]
                tgt, secs, vals = _merged((tgt, secs, vals), (
                    new_tgt[a:b] - firsts[k], new_secs[a:b], new_vals[a:b]))
            if keep - start > COMPACT_AFTER * held.lookback and secs.size:
                inside = secs >= keep  # forget what no window reaches any more
                tgt, secs, vals, start = tgt[inside], secs[inside], vals[inside], keep
            self.held_bytes -= held.nbytes
            held.tgt, held.secs, held.vals = tgt, secs, vals
            held.start, held.end, held.mark = start, r.end, mark
            held.read_at = self.reads_total
            self.held_bytes += held.nbytes
            answers.append(_series(r.signal, held.keys, held, r.start))
        return answers

    def _keep_within_budget(self) -> None:
        """Let the widest windows go until what is held fits :data:`HELD_BYTES_MAX`."""
        if self.held_bytes > HELD_BYTES_MAX:
            for signal in sorted(self._held, key=lambda name: -self._held[name].nbytes):
                self.drop((signal,))
                if self.held_bytes <= HELD_BYTES_MAX:
                    break


class _Store(Protocol):
    """The two reads of ``Store`` that :class:`HeldReads` uses."""

    def query(self, signal: str, matchers: Mapping[str, str] | None = None,
              start: float = -math.inf, end: float = math.inf) -> list[SeriesData]: ...

    def query_held(self, ranges: Mapping[str, tuple[float, float]], held: HeldWindows
                   ) -> Answers: ...


class HeldReads:
    """A store as one periodic reader (the daemon's cycle) reads it: ``query_many`` goes on
    from that reader's last reads (:class:`HeldWindows`), ``query`` reads as the store does.
    A source for ``promql.prefetch.Prefetched``."""

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.held = HeldWindows()

    def query(self, signal: str, matchers: Mapping[str, str] | None = None,
              start: float = -math.inf, end: float = math.inf) -> list[SeriesData]:
        return self.store.query(signal, matchers, start, end)

    def query_many(self, ranges: Mapping[str, tuple[float, float]]) -> Answers:
        try:
            return self.store.query_held(ranges, self.held)
        except BaseException:
            self.held.forget()  # whatever went wrong, the next reads start afresh
            raise
