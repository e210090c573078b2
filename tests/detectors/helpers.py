"""Synthetic windows for detector tests: numpy series, no store, no clock."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from gpuwarden.detectors import Detector, Finding, Window, build_detector
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.model import Labels, SeriesData, make_labels

NOW = 1_000_000.0
SRV = make_labels(node="n1", server="vllm-0", model="m")
SRV2 = make_labels(node="n1", server="vllm-1", model="m")


def gpu(i: int, node: str = "n1") -> Labels:
    return make_labels(node=node, gpu=str(i), uuid=f"GPU-{node}-{i}", model="H100")


def series(signal: str, labels: Labels, ts: Iterable[float], vs: Iterable[float]) -> SeriesData:
    return SeriesData(signal, labels, np.asarray(list(ts), dtype=np.float64),
                      np.asarray(list(vs), dtype=np.float64))


def sampled(signal: str, labels: Labels, fn: Callable[[float], float], *, start: float,
            end: float = NOW, step: float = 1.0) -> SeriesData:
    """Samples fn(t - end) (so fn(0) is the value at ``end``) every ``step`` seconds."""
    ts = np.arange(start, end + step / 2, step)
    return series(signal, labels, ts, [fn(t - end) for t in ts])


def const(signal: str, labels: Labels, value: float, *, span: float = 300.0,
          end: float = NOW, step: float = 1.0) -> SeriesData:
    return sampled(signal, labels, lambda _t: value, start=end - span, end=end, step=step)


def window(*data: SeriesData, now: float = NOW, interval: float = 1.0) -> Window:
    grouped: dict[str, list[SeriesData]] = {}
    for s in data:
        grouped.setdefault(s.signal, []).append(s)
    return Window(now=now, interval=interval, data=grouped)


def rule(name: str = "R", **kw: Any) -> RuleConfig:
    kw.setdefault("signal", "kv_cache_usage_ratio")
    return RuleConfig(name=name, **kw)


def detect(r: RuleConfig, *data: SeriesData, now: float = NOW,
           interval: float = 1.0) -> list[Finding]:
    det: Detector = build_detector(r)
    return det.evaluate(window(*data, now=now, interval=interval))


def histogram(signal: str, labels: Labels, edges: Sequence[float],
              counts_at: Callable[[float], Sequence[float]], *, start: float,
              end: float = NOW, step: float = 1.0) -> list[SeriesData]:
    """Cumulative ``<signal>_bucket`` series; counts_at(t) gives per-bucket (non-cumulative)
    totals up to t, one per finite edge plus one for +Inf."""
    ts = np.arange(start, end + step / 2, step)
    per = np.array([np.cumsum(counts_at(t - end)) for t in ts])
    les = [*(f"{e:g}" for e in edges), "+Inf"]
    return [series(f"{signal}_bucket", make_labels(dict(labels), le=le), ts, per[:, k])
            for k, le in enumerate(les)]
