"""Latency breakdown: which request phase (queue, prefill, decode) grew when a latency
quantile rule fires.

vLLM times every finished request in three phases and exports each as a histogram
(``vllm:request_queue_time_seconds``, ``_prefill_time_``, ``_decode_time_``; canonical
``queue_time_seconds``, ``prefill_time_seconds``, ``decode_time_seconds``): waiting to
be scheduled, scheduled to first token, first to last token. Their means are additive
where quantiles are not: over the same finished requests, mean queue + mean prefill +
mean decode is the mean time from queueing to the last token, the engine's share of
the mean end-to-end latency (which adds the frontend: HTTP, tokenisation). A p95 of the
sum is no sum of p95s, so the breakdown compares means,
``increase(<phase>_sum[w]) / increase(<phase>_count[w])`` (``promql/windows.py``), over
the rule's window against a baseline just before it, and names the phase whose mean grew
most, in seconds.

Which phases a rule's latency is made of (:data:`PARTS`):

* TTFT (``ttft_seconds``) is queue + prefill: decode starts after the first token. The
  phase named is the one of these two with the largest growth; decode is listed, marked
  as not part of TTFT.
* ITL (``itl_seconds``) is the time of one decode step, and a request's decode time is
  the sum of its steps: decode is the one phase ITL is part of, so it is named when it
  grew. That alone says little (a slower ITL is a slower decode), so the breakdown also
  says whether the queue grew: requests queueing up usually mean a larger running batch,
  and a larger batch makes every step slower, so "queue also grew" points at load,
  "queue unchanged" at steps that got slower at the same load. A request's decode time
  also grows with its output length, so decode can grow while ITL does not (and stay flat
  while ITL grows, when outputs got shorter).
* End-to-end latency (``e2e_latency_seconds``) is all three.

A phase "grew" when its mean rose by at least :data:`MIN_GROWTH_SECONDS` and by at least
:data:`MIN_GROWTH_RATIO` of its baseline: a mean over a minute of requests moves by
noise alone, and a queue going from 1 ms to 3 ms does not explain a TTFT SLO breach.

The baseline is the time before the rule's window up to :data:`READ_SPAN` back (9 minutes
for the default rules' 60 s windows), and never shorter than the rule's window. Why not
longer: the store answers the last 10 minutes from memory (``storage/store.py``,
``memory_window``), and the rule engine skips a rule any of whose inputs cannot be read;
reading further back would make the TTFT and ITL rules depend on the database, which
the README promises they do not (rules evaluate from memory during a database outage).
Why not shorter: at a few requests per second, minutes of finished requests give a
steady mean, and the baseline should be the normal the on-call engineer remembers, not
the first seconds of the regression.

Limits, said in the README: means, not the tail the rule's p95 watches (a regression of
a few slow requests moves the p95 more than any mean); requests are counted when they
finish, so a long generation still running is in TTFT but not yet in the phases; while
an alert stays firing the baseline moves into the regression, and after some minutes the
breakdown says nothing grew (the annotation at the first notification is the telling
one); servers exporting no phase histograms (SGLang and TGI export only the queue, Triton
and llama.cpp none) get a partial breakdown or none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuwarden.model import Labels, SeriesData
from gpuwarden.promql.windows import ratio_of_increases

PHASES = ("queue", "prefill", "decode")

#: The phases each latency histogram is made of (see the module docstring).
PARTS: dict[str, tuple[str, ...]] = {
    "ttft_seconds": ("queue", "prefill"),
    "itl_seconds": ("decode",),
    "e2e_latency_seconds": ("queue", "prefill", "decode"),
}
WHAT = {"ttft_seconds": "TTFT", "itl_seconds": "ITL", "e2e_latency_seconds": "e2e latency"}

#: How far back the breakdown reads, the rule's window included: the store's in-memory
#: span (``Store(memory_window=600.0)`` in ``storage/store.py``), so that it never makes a
#: latency rule read the database (see the module docstring).
READ_SPAN = 600.0
MIN_GROWTH_SECONDS = 0.01
MIN_GROWTH_RATIO = 0.10


def phase_signal(phase: str) -> str:
    return f"{phase}_time_seconds"


def baseline_span(window: float) -> float:
    """Seconds of baseline before a rule window of ``window`` seconds."""
    return max(READ_SPAN - window, window)


def inputs(histogram: str, window: float) -> dict[str, float]:
    """What a breakdown for a rule on ``histogram`` reads (none for other histograms)."""
    if histogram not in PARTS:
        return {}
    reach = window + baseline_span(window)
    return {f"{phase_signal(p)}{suffix}": reach for p in PHASES for suffix in ("_sum", "_count")}


Pairs = dict[str, tuple[SeriesData, SeriesData]]  # phase -> (_sum, _count) series


def index_phases(data: Mapping[str, Sequence[SeriesData]]) -> dict[Labels, Pairs]:
    """Per label set (node, server, model), the ``_sum`` and ``_count`` series of each
    phase the server exports; a phase with only one of the two is left out."""
    out: dict[Labels, Pairs] = {}
    for phase in PHASES:
        counts = {s.labels: s for s in data.get(f"{phase_signal(phase)}_count", ())}
        for total in data.get(f"{phase_signal(phase)}_sum", ()):
            count = counts.get(total.labels)
            if count is not None:
                out.setdefault(total.labels, {})[phase] = (total, count)
    return out


@dataclass(frozen=True, slots=True)
class PhaseChange:
    """One phase's mean seconds per finished request, before and in the rule's window
    (None: no request finished there)."""

    phase: str
    before: float | None
    now: float | None

    @property
    def growth(self) -> float | None:
        if self.before is None or self.now is None:
            return None
        return self.now - self.before

    def significant(self, delta: float) -> bool:
        """A move of ``delta`` seconds (either way) beyond noise, by both floors."""
        assert self.before is not None
        return abs(delta) >= max(MIN_GROWTH_SECONDS, MIN_GROWTH_RATIO * self.before)

    @property
    def grew(self) -> bool:
        growth = self.growth
        return growth is not None and growth > 0 and self.significant(growth)


def changes(pairs: Pairs, now: float, window: float) -> list[PhaseChange]:
    """Each exported phase's mean in ``[now - window, now]`` and in the baseline before."""
    start = now - window
    base_start = start - baseline_span(window)
    return [PhaseChange(p, ratio_of_increases(*pairs[p], base_start, start),
                        ratio_of_increases(*pairs[p], start, now))
            for p in PHASES if p in pairs]


def _s(x: float) -> str:
    """Seconds as an on-call engineer reads them: 0.08 s, 0.0034 s, 1.91 s, 123 s."""
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{x:.2g} s"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds % 60 == 0 else f"{seconds:g} s"


@dataclass(frozen=True, slots=True)
class Breakdown:
    text: str  # the ``breakdown`` annotation
    lead: str  # its first clause, for the description


def _entry(c: PhaseChange, histogram: str, window: float, named: bool) -> str:
    """One phase that is not the one named (``named``: whether one was)."""
    if c.now is None:
        text = f"{c.phase}: no request finished in the last {_minutes(window)}"
    elif c.before is None:
        text = f"{c.phase} {_s(c.now)} (no baseline)"
    elif not c.significant(c.now - c.before):
        text = f"{c.phase} unchanged at {_s(c.now)}"
    else:
        text = f"{c.phase} {_s(c.before)} -> {_s(c.now)}"
    if histogram == "itl_seconds" and c.phase == "queue" and c.growth is not None:
        also = " also" if named else ""
        text = (f"queue{also} grew: {text.removeprefix('queue ')} (a queue that grows usually "
                "comes with a larger batch, which slows every step)" if c.grew
                else f"{text}: not a load increase")
    elif c.phase not in PARTS[histogram]:
        text += f" (not part of {WHAT[histogram]})"
    return text


def describe(histogram: str, found: Sequence[PhaseChange], window: float) -> Breakdown | None:
    """The breakdown of a latency rule on ``histogram``; None when the server exports no
    phase histogram at all (or the histogram is not one :data:`PARTS` decomposes)."""
    if histogram not in PARTS or not found:
        return None
    base = _minutes(baseline_span(window))
    if all(c.now is None for c in found):
        lead = f"breakdown unavailable: no request finished in the last {_minutes(window)}"
        return Breakdown(lead, lead)
    if all(c.before is None for c in found):
        lead = f"no baseline: no request finished in the {base} before the rule's window"
        means = ", ".join(f"{c.phase} {_s(c.now)}" for c in found if c.now is not None)
        return Breakdown(f"{lead}; means now: {means}", lead)
    parts = PARTS[histogram]
    exported = {c.phase: c for c in found}
    comparable = [exported[p] for p in parts if p in exported and exported[p].growth is not None]
    grown = [c for c in comparable if c.grew]
    named = max(grown, key=lambda c: c.growth or 0.0) if grown else None
    if named is not None:
        assert named.before is not None and named.now is not None
        ratio = f", x{named.now / named.before:.3g}" if named.before > 0 else ""
        most = " most" if len(comparable) > 1 else ""
        lead = (f"{named.phase} grew{most}: mean {_s(named.before)} -> {_s(named.now)} "
                f"(+{_s(named.now - named.before)}{ratio})")
    elif comparable:
        lead = f"no phase of {WHAT[histogram]} grew ({', '.join(c.phase for c in comparable)})"
    else:
        lead = f"no phase of {WHAT[histogram]} to compare"
    text = f"{lead} against the {base} before"
    # The phase of the rule's latency first, then the others in PHASES order (queue first
    # for ITL: its note is the second thing to read).
    rest = sorted((c for c in found if c is not named),
                  key=lambda c: (c.phase not in parts, PHASES.index(c.phase)))
    entries = [_entry(c, histogram, window, named is not None) for c in rest]
    entries += [f"{p} not exported by this server" for p in parts if p not in exported]
    return Breakdown("; ".join([text, *entries]), lead)
