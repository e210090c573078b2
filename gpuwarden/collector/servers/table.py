"""What a mapping table says: per canonical signal, where on a server's ``/metrics`` it is.

The tables (``servers/<kind>.py``) are data built from these types; ``servers/base.py``
is the one piece of machinery that applies any of them to a parsed exposition (its
docstring says how: aliases, parts, units, aggregation, absence, histograms). The types
live apart from the machinery so that each stays one job, and so that a table reads as
what it is: a list of wire names, checked when it is built.

A source is read one of two ways:

* **A sample's value** (the common case): ``src("vllm:num_requests_running")``.
* **Labels of an info metric** (:func:`info_label`): some servers publish their
  configuration as an "info" gauge whose value is a constant 1 and whose *labels* carry
  the settings (vLLM's ``vllm:cache_config_info{num_gpu_blocks="8192",block_size="16",
  gpu_memory_utilization="0.9",...}``). Such a source takes its value from the named
  label; with several labels, from their product, taken within each series (blocks x
  block size per data-parallel engine, which the machinery then sums over engines: a
  product of sums would be wrong). A label that is empty, ``None``, or not a finite
  non-negative number gives no value for that series: these labels are sizes, counts
  and fractions, and a setting the server left unset (``num_cpu_blocks="None"``) must read
  as absent, never as 0. An info source is only for gauge (or counter) signals.

Parts of an alternative add up by default (``combine="add"``). ``combine="multiply"``
multiplies them per model instead (TensorRT-LLM's KV capacity is its ``max`` block count
times its ``tokens_per`` block); a product of two aggregates is only right when each
part is one series, so a model with more than one series in any part (two model
versions, two engines) gets no sample for that signal rather than a wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gpuwarden.signals import SERVER_LABELS, SIGNALS, Kind

Agg = Literal["sum", "max"]
Combine = Literal["add", "multiply"]

__all__ = [
    "Agg",
    "Alternative",
    "Combine",
    "ServerMapping",
    "SignalMap",
    "Source",
    "info_label",
    "signal_map",
    "src",
]


@dataclass(frozen=True, slots=True)
class Source:
    """One metric on the wire, optionally narrowed to series with given label values.

    For a histogram signal ``metric`` is the family name (without ``_bucket``); otherwise
    it is the exact sample name (``vllm:prompt_tokens_total``, or a histogram's
    ``..._sum`` when a server only counts tokens that way). ``labels``, when set, makes
    it an info source: the value is read from (the product of) these labels, not from
    the sample value (module docstring).
    """

    metric: str
    match: tuple[tuple[str, str], ...] = ()
    divisor: float = 1.0
    labels: tuple[str, ...] = ()


Alternative = tuple[Source, ...]  # parts whose values add up (or multiply: ``combine``)
# Where a histogram source's samples may be: a superset of what a scalar source needs.
SUFFIXES = ("", "_bucket", "_count", "_sum")


@dataclass(frozen=True, slots=True)
class SignalMap:
    """How one canonical signal is read off the wire: alternatives in order of preference.

    (A metric mapping, not an alert rule: those are ``detectors.rule.RuleConfig``.)
    """

    signal: str
    alternatives: tuple[Alternative, ...]
    agg: Agg = "sum"
    requires: tuple[str, ...] = ()  # sample names that must be present for the map to apply
    combine: Combine = "add"

    @property
    def kind(self) -> Kind:
        return SIGNALS[self.signal].kind


@dataclass(frozen=True, slots=True)
class ServerMapping:
    """The table for one server kind.

    ``read_names`` is every sample name the table can read, worked out once, for
    ``promtext.parse(only=...)``: a superset (each source with every histogram suffix)
    is fine, it only decides which families the parser may leave unparsed.

    ``one_model``: the server serves exactly one model per process (vLLM), so a series
    that lacks the model label (vLLM's ``cache_config_info``, which is per engine, not
    per model) belongs to the model the payload's other series name, when they name
    exactly one. With none or several, such series keep ``model=""``: never guessed.
    """

    kind: str
    signal_maps: tuple[SignalMap, ...]
    model_label: str | None = None
    replica_labels: tuple[str, ...] = ()
    metrics_hint: str = ""  # what to tell an operator whose /metrics answers 404/501
    one_model: bool = False
    read_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Catch table typos at import time, not as a silently missing signal in production.
        seen: set[str] = set()
        names: set[str] = set()
        for smap in self.signal_maps:
            sig = SIGNALS.get(smap.signal)
            if sig is None or sig.labels != SERVER_LABELS:
                raise ValueError(f"{self.kind}: {smap.signal!r} is not a per-server signal")
            if smap.signal in seen:
                raise ValueError(f"{self.kind}: {smap.signal!r} mapped twice")
            if not smap.alternatives or any(not alt for alt in smap.alternatives):
                raise ValueError(f"{self.kind}: {smap.signal!r} has an empty alternative")
            if sig.kind is Kind.HISTOGRAM and any(len(alt) > 1 for alt in smap.alternatives):
                raise ValueError(f"{self.kind}: histogram {smap.signal!r} cannot add families")
            if sig.kind is Kind.HISTOGRAM and any(s.labels for a in smap.alternatives
                                                  for s in a):
                raise ValueError(f"{self.kind}: histogram {smap.signal!r} cannot read labels")
            seen.add(smap.signal)
            names.update(smap.requires)
            for alt in smap.alternatives:
                names.update(s.metric + sfx for s in alt for sfx in SUFFIXES)
        object.__setattr__(self, "read_names", frozenset(names))  # frozen: set once, here

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(smap.signal for smap in self.signal_maps)


def src(metric: str, *, divisor: float = 1.0, **match: str) -> Source:
    """A :class:`Source`; keyword arguments select series by label value."""
    return Source(metric, tuple(sorted(match.items())), divisor)


def info_label(metric: str, *labels: str, **match: str) -> Source:
    """An info source: the value of label ``labels[0]`` of ``metric``'s series (of the
    product of several labels, per series); keyword arguments select series."""
    if not labels:
        raise ValueError(f"{metric}: an info source names at least one label")
    return Source(metric, tuple(sorted(match.items())), 1.0, labels)


def signal_map(
    signal: str,
    *alternatives: str | Source | tuple[str | Source, ...],
    agg: Agg = "sum",
    requires: tuple[str, ...] = (),
    combine: Combine = "add",
) -> SignalMap:
    """A :class:`SignalMap`; each alternative is a name, a :class:`Source`, or a tuple of parts."""

    def one(part: str | Source) -> Source:
        return Source(part) if isinstance(part, str) else part

    alts = tuple(
        tuple(one(p) for p in alt) if isinstance(alt, tuple) else (one(alt),)
        for alt in alternatives
    )
    return SignalMap(signal, alts, agg, requires, combine)
