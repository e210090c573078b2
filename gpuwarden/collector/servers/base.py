"""Mapping tables from each inference server's ``/metrics`` onto the canonical signals.

Server-specific metric names live only here (ARCHITECTURE.md, convention 4). Each
``servers/<kind>.py`` holds *data* — a :class:`ServerMapping` listing, per canonical
signal, the wire names to read (one :class:`SignalMap` each; the types are in
``servers/table.py``) — and this module holds the one piece of machinery that applies
any table to a parsed exposition. Keeping the logic
in one place means a vLLM rename, or a new server, is a table edit and never a new code
path. The tables import this module, never the other way: they are found by kind through
``gpuwarden.collector.registry.SERVER_KINDS`` and loaded on first use.

What the machinery does, and why:

* **Aliases.** A signal map lists alternatives in order of preference. The first one present
  in the payload wins and the rest are ignored. Servers rename metrics between releases
  and, during deprecation windows, export both spellings (vLLM 0.9.2-0.11 export
  ``vllm:kv_cache_usage_perc`` *and* ``vllm:gpu_cache_usage_perc``); taking the first
  present never double-counts and keeps working on old and new builds.
* **Parts.** An alternative may be several metrics whose values add up (llama.cpp counts
  cached and computed prompt tokens separately; the canonical prompt-token counter is
  their sum, as vLLM's is). Every part must be present, else the alternative is skipped,
  so a half-known quantity is never emitted as if it were whole. A table may multiply
  parts instead (``combine="multiply"``: blocks x tokens per block), one series per part.
* **Info labels.** A source may read a number from the labels of an info metric (a
  server's configuration published as labels of a gauge = 1) instead of a sample's
  value; a label that is unset or not a number gives no sample (``servers/table.py``).
* **Units.** ``Source.divisor`` converts to base units (Triton's milliseconds to seconds,
  applied to histogram bounds and sums alike). Division, not multiplication by 0.001,
  so that ``le="100"`` ms becomes exactly ``0.1``.
* **Aggregation.** Output series are keyed only by ``model`` (plus ``le`` for buckets):
  every other server label (vLLM's data-parallel ``engine``, SGLang's ``is_streaming``
  and ``dp_rank``, Triton's ``version``) is aggregated away — summed for counts, maxed
  for occupancy (one full DP engine is what rejects requests, a mean would hide it).
  Labels named in ``replica_labels`` identify copies of the same number (SGLang's
  ``tp_rank`` with ``--enable-metrics-for-all-schedulers``); those are collapsed with
  ``max`` first so that the sum does not count one batch once per tensor-parallel rank.
* **Absence.** A signal whose metrics are not in the payload is not emitted — never
  zero-filled: "server has no TTFT metric" and "TTFT is zero" must stay different.
* **Histograms** are read from the cumulative ``<family>_bucket`` / ``_count`` / ``_sum``
  series, bucket edges taken from the scrape (servers let users override them), ``le``
  parsed as a float (servers print ``"1.0"`` or ``"100"``) and re-rendered the way
  prometheus-client renders it (``"0.001"``, ``"1.0"``, ``"+Inf"``), which is also how
  gpuwarden's own exposition prints it. A family whose ``+Inf`` bucket is missing gets
  one from ``_count`` (the two are equal by definition); with neither, the buckets
  are dropped because no quantile can be computed from them.

The ``model`` label comes from the server label named by ``ServerMapping.model_label``
(``model_name`` for vLLM/SGLang, ``model`` for Triton). Servers that serve one
unlabelled model (TGI, llama.cpp) get ``model=""``: the config's server *name* is
already the ``server`` label, and repeating it as a model name would be invented data.
A one-model server's series without the label (vLLM's per-engine ``cache_config_info``)
take the one model its other series name (``ServerMapping.one_model``).
``_created`` series and exposition timestamps are ignored; every sample is stamped with
the scrape time ``ts``.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from gpuwarden.collector.promtext import Exposition
from gpuwarden.collector.promtext_lexer import parse_label_set
from gpuwarden.collector.servers.table import (
    Agg,
    Alternative,
    ServerMapping,
    SignalMap,
    Source,
)
from gpuwarden.model import Labels, Sample, make_labels
from gpuwarden.promql.buckets import parse_le
from gpuwarden.promql.gofloat import go_float
from gpuwarden.signals import Kind

# An info label's number: plain decimal or exponent notation, no sign (sizes, counts and
# fractions are never negative), so "None", "", "auto", "-1", "nan", "inf" and Python's
# own extras ("1_000", " 12 ") are not numbers here.
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def label_number(text: str | None) -> float | None:
    """The value of an info metric's label, or None when it is not a finite number >= 0."""
    if text is None or not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None  # "1e400" overflows to inf


def _label_product(labels: Mapping[str, str], names: tuple[str, ...]) -> float | None:
    product = 1.0
    for name in names:
        value = label_number(labels.get(name))
        if value is None:
            return None
        product *= value
    return product if math.isfinite(product) else None


# --------------------------------------------------------------------------- machinery

_OutKey = tuple[str, float | None]  # (model, le) — le only for histogram buckets
# Bound on each per-string cache below. A node's servers repeat the same few thousand
# label strings every scrape; a server minting new label values without end (a request
# id as a label) only ever costs a cache refill, never unbounded memory.
_CACHE_MAX = 65536


@dataclass(frozen=True, slots=True)
class _Series:
    """What the machinery needs from one raw label string, worked out once per string.

    Parsing labels, picking the model and building the aggregation identity was most of
    the mapping's cost at large payloads (a 270 KB vLLM scrape has ~3,000 series), and
    the same strings come back on every scrape, so it is memoised per mapping.
    """

    labels: Mapping[str, str]  # shared between scrapes: read, never mutated
    model: str
    ident: Labels  # the labels without replica labels and ``le``
    le: float | None


# kind -> raw label string -> its _Series (None: a malformed label set, skipped).
_SERIES_CACHE: dict[str, dict[str, _Series | None]] = defaultdict(dict)


def _describe(mapping: ServerMapping, raw: str) -> _Series | None:
    cache = _SERIES_CACHE[mapping.kind]
    try:
        return cache[raw]
    except KeyError:
        pass
    try:
        labels = parse_label_set(raw)
    except ValueError:
        info = None  # a duplicated label name: skip the series, not the scrape
    else:
        model = labels.get(mapping.model_label, "") if mapping.model_label else ""
        ident = tuple(sorted(
            (k, v) for k, v in labels.items() if k not in mapping.replica_labels and k != "le"
        ))
        info = _Series(labels, model, ident, _le(labels))
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[raw] = info
    return info


def _series(
    mapping: ServerMapping, exp: Exposition, name: str, source: Source, *, scale: bool = True
) -> Iterator[tuple[_Series, float]]:
    """Samples of ``name`` matching ``source.match``, NaN dropped, in base units; for an
    info source, the product of its labels instead of the value (none: skipped)."""
    divisor = source.divisor if scale else 1.0
    match, from_labels = source.match, source.labels
    isnan = math.isnan
    for raw, value, _ts in exp.samples.get(name, ()):
        if isnan(value):
            continue  # NaN would poison every sum it joins; treat it as "no value"
        info = _describe(mapping, raw)
        if info is None:
            continue
        if match and not all(info.labels.get(k) == v for k, v in match):
            continue
        got = _label_product(info.labels, from_labels) if from_labels else value
        if got is None:
            continue  # an unset or garbled setting: absent, never 0
        yield info, (got / divisor if divisor != 1.0 else got)


class _Aggregator:
    """Collapse server series to one value per output key (model, and ``le`` for buckets).

    Two stages: series that differ only in a replica label are copies (max), what is
    left is summed or maxed as the signal map says.
    """

    def __init__(self, agg: Agg) -> None:
        self._agg = agg
        self._groups: dict[_OutKey, dict[Labels, float]] = defaultdict(dict)

    def add(self, info: _Series, value: float, le: float | None = None) -> None:
        group = self._groups[(info.model, le)]
        prev = group.get(info.ident)
        group[info.ident] = value if prev is None or value > prev else prev

    def by_model(self, *, single: bool = False) -> dict[str, float]:
        """Per model; ``single``: only models with one series (what a product needs)."""
        fold = math.fsum if self._agg == "sum" else max
        return {model: float(fold(g.values())) for (model, _), g in self._groups.items()
                if not single or len(g) == 1}


def _present(mapping: ServerMapping, exp: Exposition, name: str, source: Source) -> bool:
    return next(_series(mapping, exp, name, source), None) is not None


def _pick(
    mapping: ServerMapping, exp: Exposition, smap: SignalMap, suffixes: tuple[str, ...]
) -> Alternative | None:
    """First alternative whose every part is present (histograms: under any suffix)."""
    if any(not exp.samples.get(name) for name in smap.requires):
        return None
    for alt in smap.alternatives:
        if all(any(_present(mapping, exp, s.metric + sfx, s) for sfx in suffixes) for s in alt):
            return alt
    return None


class _OutputLabels:
    """The canonical label tuples of one server's output series, built once each."""

    def __init__(self, node: str, server: str) -> None:
        self._base = {"node": node, "server": server}
        self._series: dict[str, Labels] = {}
        self._buckets: dict[tuple[str, float], Labels] = {}

    def series(self, model: str) -> Labels:
        got = self._series.get(model)
        if got is None:
            if len(self._series) >= _CACHE_MAX:
                self._series.clear()
            got = self._series[model] = make_labels(self._base, model=model)
        return got

    def bucket(self, model: str, le: float) -> Labels:
        got = self._buckets.get((model, le))
        if got is None:
            if len(self._buckets) >= _CACHE_MAX:
                self._buckets.clear()
            got = make_labels(self._base, model=model, le=go_float(le))
            self._buckets[(model, le)] = got
        return got


# (node, server) -> its output labels; a handful of entries per daemon.
_OUTPUT_LABELS: dict[tuple[str, str], _OutputLabels] = {}


def _output_labels(node: str, server: str) -> _OutputLabels:
    got = _OUTPUT_LABELS.get((node, server))
    if got is None:
        if len(_OUTPUT_LABELS) >= _CACHE_MAX:
            _OUTPUT_LABELS.clear()
        got = _OUTPUT_LABELS[(node, server)] = _OutputLabels(node, server)
    return got


def _map_scalar(
    mapping: ServerMapping,
    smap: SignalMap,
    exp: Exposition,
    out_labels: _OutputLabels,
    ts: float,
) -> list[Sample]:
    alt = _pick(mapping, exp, smap, ("",))
    if alt is None:
        return []
    multiply = smap.combine == "multiply"
    per_part = []
    for source in alt:
        acc = _Aggregator(smap.agg)
        for info, value in _series(mapping, exp, source.metric, source):
            acc.add(info, value)
        per_part.append(acc.by_model(single=multiply))
    # Parts add up (or multiply) per model; a model must be in every part to be emitted.
    models = set.intersection(*(set(p) for p in per_part))
    fold = math.prod if multiply else math.fsum
    return [
        Sample(smap.signal, out_labels.series(m), float(fold(p[m] for p in per_part)), ts)
        for m in sorted(models)
    ]


def _le(labels: Mapping[str, str]) -> float | None:
    return parse_le(labels.get("le"))


def _bucket_totals(
    mapping: ServerMapping, exp: Exposition, source: Source
) -> dict[str, dict[float, float]]:
    """Per model, per bound: bucket counts summed over series (replica copies maxed).

    :class:`_Aggregator` inlined for the bulk of every scrape (a bucket per bound per
    model per histogram), where nearly every group holds one series.
    """
    groups: dict[tuple[str, float], dict[Labels, float]] = {}
    divisor = source.divisor
    for info, value in _series(mapping, exp, source.metric + "_bucket", source, scale=False):
        le = info.le
        if le is None:
            continue
        key = (info.model, le if divisor == 1.0 else le / divisor)  # only the bound scales
        group = groups.get(key)
        if group is None:
            groups[key] = {info.ident: value}
        else:
            prev = group.get(info.ident)
            if prev is None or value > prev:
                group[info.ident] = value
    out: dict[str, dict[float, float]] = defaultdict(dict)
    for (model, le), group in groups.items():
        out[model][le] = next(iter(group.values())) if len(group) == 1 else math.fsum(
            group.values())
    return out


def _map_histogram(
    mapping: ServerMapping,
    smap: SignalMap,
    exp: Exposition,
    out_labels: _OutputLabels,
    ts: float,
) -> list[Sample]:
    alt = _pick(mapping, exp, smap, ("_bucket", "_count"))
    if alt is None:
        return []
    source = alt[0]  # one family per alternative (checked when the table is built)
    edges_by_model = _bucket_totals(mapping, exp, source)
    counts, sums = _Aggregator("sum"), _Aggregator("sum")
    for info, value in _series(mapping, exp, source.metric + "_count", source, scale=False):
        counts.add(info, value)
    for info, value in _series(mapping, exp, source.metric + "_sum", source):
        sums.add(info, value)
    count_by_model, sum_by_model = counts.by_model(), sums.by_model()

    out: list[Sample] = []
    bucket_signal, count_signal, sum_signal = (
        f"{smap.signal}_bucket", f"{smap.signal}_count", f"{smap.signal}_sum")
    for model in sorted(set(edges_by_model) | set(count_by_model)):
        edges = edges_by_model.get(model, {})
        count = count_by_model.get(model)
        if math.inf not in edges:
            if count is None:
                continue  # no +Inf and no _count: nothing a quantile could use
            edges[math.inf] = count
        out.extend(
            Sample(bucket_signal, out_labels.bucket(model, le), n, ts)
            for le, n in sorted(edges.items())
        )
        series = out_labels.series(model)
        out.append(Sample(count_signal, series, edges[math.inf] if count is None
                          else count, ts))
        if model in sum_by_model:
            out.append(Sample(sum_signal, series, sum_by_model[model], ts))
    return out


def map_exposition(
    mapping: ServerMapping, exp: Exposition, *, node: str, server: str, ts: float
) -> list[Sample]:
    """Canonical samples for one scrape of a server whose table is ``mapping``.

    Pure (the memos of label strings only change its speed) and cheap, so the collector
    can call it on every 1 s cycle and tests can call it on a recorded payload.
    """
    out_labels = _output_labels(node, server)
    out: list[Sample] = []
    for smap in mapping.signal_maps:
        fn = _map_histogram if smap.kind is Kind.HISTOGRAM else _map_scalar
        out.extend(fn(mapping, smap, exp, out_labels, ts))
    return _own_model(out) if mapping.one_model else out


_NO_MODEL = ("model", "")


def _own_model(out: list[Sample]) -> list[Sample]:
    """For a one-model server: samples without a model get the one model the others
    name (``ServerMapping.one_model``), unless that signal already has a sample for it."""
    models = {v for s in out for k, v in s.labels if k == "model"}
    models.discard("")
    if len(models) != 1 or not any(_NO_MODEL in s.labels for s in out):
        return out
    (model,) = models
    named = {s.signal for s in out if _NO_MODEL not in s.labels}
    return [
        s._replace(labels=tuple((k, model if k == "model" else v) for k, v in s.labels))
        if s.signal not in named and _NO_MODEL in s.labels else s
        for s in out
    ]


def served_models(samples: Iterable[Sample]) -> tuple[str, ...]:
    """The non-empty ``model`` label values among mapped samples, sorted."""
    models = {dict(s.labels).get("model", "") for s in samples}
    models.discard("")
    return tuple(sorted(models))

