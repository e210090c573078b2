"""A mapping table applied to one fixed payload layout, worked out once: a scrape is then
a list of value look-ups.

``servers/base.py`` maps a parsed exposition by looking at every series' labels, picking
the alternative present, grouping by model and ``le``, and so on; none of that depends on
the sample values, only on which series the payload has, and a server prints the same
series every scrape (``promtext_memo``). :func:`compile_mapping` runs those decisions
once for one layout (sample names, label strings, the position of each value) and keeps,
per output sample, its signal, its labels and a recipe over the values. The recipes
fold the values with the same functions in the same order as ``base.py``
(``math.fsum``, ``max``, the first-maximum replica rule, ``math.prod``, division by the
unit divisor), so the result is the same, bit for bit; a plan is only kept after it
reproduced ``map_exposition`` on the scrape it was made from.

A NaN value makes ``base.py`` drop the series (absent, not 0), which changes the layout
the decisions were made for: :meth:`MappingPlan.samples` returns None then (as it does
when two infinities of opposite sign meet, to keep the check one ``sum``), and the
caller maps in full.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from operator import itemgetter

from gpuwarden.collector.promtext import Exposition
from gpuwarden.collector.servers.base import (
    _describe,
    _label_product,
    _output_labels,
    _own_model,
    _pick,
    _Series,
    map_exposition,
)
from gpuwarden.collector.servers.table import ServerMapping, SignalMap, Source
from gpuwarden.model import Labels, Sample
from gpuwarden.signals import Kind

__all__ = ["Layout", "MappingPlan", "compile_mapping", "same_samples"]

# A sample name, its label strings in payload order, and where each one's value is.
Layout = Iterable[tuple[str, Sequence[str], Sequence[int]]]
# A value: a position in the values (int), a constant (float: an info label's number),
# or a position and the divisor to apply.
_Term = int | float | tuple[int, float]
_Recipe = int | Callable[[Sequence[float]], float]


def _term(term: _Term, values: Sequence[float]) -> float:
    if term.__class__ is int:
        return values[term]
    if term.__class__ is float:
        return term
    i, divisor = term  # type: ignore[misc]
    return values[i] / divisor


def _replica_max(terms: tuple[_Term, ...], values: Sequence[float]) -> float:
    """``_Aggregator.add``'s rule: the first value, replaced only by a greater one."""
    best = _term(terms[0], values)
    for term in terms[1:]:
        best = max(best, _term(term, values))  # the first of equal ones: 0.0 stays 0.0
    return best


def _fold(agg: str, groups: tuple[tuple[_Term, ...], ...], values: Sequence[float]) -> float:
    """``_Aggregator.by_model`` for one model: replica max per identity, then sum or max."""
    got = [_replica_max(g, values) for g in groups]
    return float(math.fsum(got) if agg == "sum" else max(got))


def _scalar(multiply: bool, parts: tuple[tuple[str, tuple[tuple[_Term, ...], ...]], ...],
            values: Sequence[float]) -> float:
    got = [_fold(agg, groups, values) for agg, groups in parts]
    return float(math.prod(got) if multiply else math.fsum(got))


def _bucket(groups: tuple[tuple[_Term, ...], ...], values: Sequence[float]) -> float:
    """``_bucket_totals``: one identity's value as it is, several summed."""
    if len(groups) == 1:
        return _replica_max(groups[0], values)
    return math.fsum([_replica_max(g, values) for g in groups])


def _direct(groups: tuple[tuple[_Term, ...], ...]) -> _Recipe:
    """A bucket of one series read as it is: the position itself (the common case)."""
    if len(groups) == 1 and len(groups[0]) == 1 and groups[0][0].__class__ is int:
        return groups[0][0]
    return partial(_bucket, groups)


_Struct = dict[str, list[tuple[str, int]]]


def _terms(mapping: ServerMapping, struct: _Struct, name: str, source: Source, *,
           scale: bool = True) -> Iterator[tuple[_Series, _Term]]:
    """``base._series`` over positions instead of values (no NaN: see the docstring)."""
    divisor = source.divisor if scale else 1.0
    for raw, pos in struct.get(name, ()):
        info = _describe(mapping, raw)
        if info is None:
            continue
        if source.match and not all(info.labels.get(k) == v for k, v in source.match):
            continue
        if source.labels:
            got = _label_product(info.labels, source.labels)
            if got is None:
                continue
            yield info, float(got / divisor if divisor != 1.0 else got)
        else:
            yield info, (pos if divisor == 1.0 else (pos, divisor))


def _group(items: Iterable[tuple[_Series, _Term]]) -> dict[str, dict[Labels, list[_Term]]]:
    """Per model, per identity (insertion order kept): the replica terms."""
    out: dict[str, dict[Labels, list[_Term]]] = {}
    for info, term in items:
        out.setdefault(info.model, {}).setdefault(info.ident, []).append(term)
    return out


def _frozen(ids: dict[Labels, list[_Term]]) -> tuple[tuple[_Term, ...], ...]:
    return tuple(tuple(t) for t in ids.values())


_Out = list[tuple[str, Labels, _Recipe]]


def _plan_scalar(mapping: ServerMapping, smap: SignalMap, exp: Exposition, struct: _Struct,
                 *, node: str, server: str) -> _Out:
    alt = _pick(mapping, exp, smap, ("",))
    if alt is None:
        return []
    multiply = smap.combine == "multiply"
    per_part = []
    for source in alt:
        by_model = _group(_terms(mapping, struct, source.metric, source))
        per_part.append({m: _frozen(ids) for m, ids in by_model.items()
                         if not multiply or len(ids) == 1})
    models = set.intersection(*(set(p) for p in per_part))
    labels = _output_labels(node, server)
    return [(smap.signal, labels.series(m),
             partial(_scalar, multiply, tuple((smap.agg, p[m]) for p in per_part)))
            for m in sorted(models)]


def _plan_histogram(mapping: ServerMapping, smap: SignalMap, exp: Exposition,
                    struct: _Struct, *, node: str, server: str) -> _Out:
    alt = _pick(mapping, exp, smap, ("_bucket", "_count"))
    if alt is None:
        return []
    source = alt[0]
    divisor = source.divisor
    buckets: dict[tuple[str, float], dict[Labels, list[_Term]]] = {}
    for info, term in _terms(mapping, struct, source.metric + "_bucket", source, scale=False):
        le = info.le
        if le is None:
            continue
        key = (info.model, le if divisor == 1.0 else le / divisor)
        buckets.setdefault(key, {}).setdefault(info.ident, []).append(term)
    edges_by_model: dict[str, dict[float, _Recipe]] = {}
    for (model, le), ids in buckets.items():
        edges_by_model.setdefault(model, {})[le] = _direct(_frozen(ids))
    counts = {m: partial(_fold, "sum", _frozen(ids)) for m, ids in _group(
        _terms(mapping, struct, source.metric + "_count", source, scale=False)).items()}
    sums = {m: partial(_fold, "sum", _frozen(ids))
            for m, ids in _group(_terms(mapping, struct, source.metric + "_sum", source)).items()}
    labels = _output_labels(node, server)
    out: _Out = []
    for model in sorted(set(edges_by_model) | set(counts)):
        edges = edges_by_model.get(model, {})
        count = counts.get(model)
        if math.inf not in edges:
            if count is None:
                continue
            edges[math.inf] = count
        out.extend((f"{smap.signal}_bucket", labels.bucket(model, le), recipe)
                   for le, recipe in sorted(edges.items(), key=lambda kv: kv[0]))
        series = labels.series(model)
        out.append((f"{smap.signal}_count", series, edges[math.inf] if count is None
                    else count))
        if model in sums:
            out.append((f"{smap.signal}_sum", series, sums[model]))
    return out


def same_samples(a: Sequence[Sample], b: Sequence[Sample]) -> bool:
    """Equal lists, values compared bit for bit (-0.0 is not 0.0; NaN equals NaN)."""
    return len(a) == len(b) and all(
        x.signal == y.signal and x.labels == y.labels and x.ts == y.ts and (
            (x.value == y.value and math.copysign(1.0, x.value) == math.copysign(1.0, y.value))
            or (x.value != x.value and y.value != y.value))
        for x, y in zip(a, b, strict=True))


@dataclass(frozen=True, slots=True)
class MappingPlan:
    """Per output sample: its signal, labels and recipe (module docstring)."""

    outputs: tuple[tuple[str, Labels, _Recipe], ...]
    watched: Callable[[Sequence[float]], tuple[float, ...]]  # the values the table reads

    def samples(self, values: Sequence[float], ts: float) -> list[Sample] | None:
        """``map_exposition``'s samples for these values; None when one it reads is NaN."""
        total = sum(self.watched(values))
        if math.isnan(total):
            return None
        new = tuple.__new__
        return [new(Sample, (signal, labels, values[r] if r.__class__ is int
                             else r(values), ts))  # type: ignore[operator]
                for signal, labels, r in self.outputs]


def compile_mapping(mapping: ServerMapping, layout: Layout, values: Sequence[float], *,
                    node: str, server: str) -> MappingPlan | None:
    """The plan of ``mapping`` for payloads of this layout, checked on ``values``
    (the scrape it is made from); None when it does not reproduce ``map_exposition``
    exactly, or those values hold a NaN."""
    struct: _Struct = {}
    samples: dict[str, list[tuple[str, float, float | None]]] = {}
    watched: list[int] = []  # whether a series is present depends on these being NaN
    for name, raws, slots in layout:
        struct[name] = list(zip(raws, slots, strict=True))
        samples[name] = [(raw, values[i], None) for raw, i in struct[name]]
        if name in mapping.read_names:
            watched.extend(slots)
    if any(math.isnan(values[i]) for i in watched):
        return None
    exp = Exposition(samples=samples)
    out: _Out = []
    for smap in mapping.signal_maps:
        fn = _plan_histogram if smap.kind is Kind.HISTOGRAM else _plan_scalar
        out.extend(fn(mapping, smap, exp, struct, node=node, server=server))
    if mapping.one_model:  # the relabelling depends on the labels only
        relabelled = _own_model([Sample(s, lab, 0.0, 0.0) for s, lab, _ in out])
        out = [(s, r.labels, recipe) for (s, _, recipe), r in zip(out, relabelled, strict=True)]
    watched.sort()
    plan = MappingPlan(tuple(out), (itemgetter(*watched) if len(watched) > 1 else
                                    lambda v: tuple(v[i] for i in watched)))
    got = plan.samples(values, 0.0)
    want = map_exposition(mapping, exp, node=node, server=server, ts=0.0)
    return plan if got is not None and same_samples(got, want) else None
