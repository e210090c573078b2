"""Core value types shared by collectors, storage, detectors and the exposition.

A :class:`Sample` is one observation of one canonical signal for one label set. Label
sets are kept as sorted tuples of pairs: hashable, cheap to compare, and one canonical
spelling per series, so the storage series identity (signal + sorted labels) falls out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

Labels = tuple[tuple[str, str], ...]

# numpy (~0.1-0.2 s to import) is needed by storage and the detectors, not by the
# collectors that import this module on the way to the first stored sample: the array
# alias is a typing matter, resolved at run time only when asked for.
if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]
else:

    def __getattr__(name: str) -> Any:
        if name == "FloatArray":
            import numpy as np
            import numpy.typing as npt

            return npt.NDArray[np.float64]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_labels(
    mapping: Mapping[str, str] | Iterable[tuple[str, str]] = (), /, **extra: str
) -> Labels:
    """Return the canonical (sorted, str-valued) label tuple for a mapping plus keywords."""
    items = dict(mapping.items() if isinstance(mapping, Mapping) else mapping)
    items.update(extra)
    return tuple(sorted((str(k), str(v)) for k, v in items.items()))


def label_dict(labels: Labels) -> dict[str, str]:
    return dict(labels)


def labels_match(labels: Labels, matchers: Mapping[str, str] | None) -> bool:
    """Whether every matcher is an exact equality of the label set (no matchers: all do);
    the store's queries and backtest's prefetched windows select series alike."""
    if not matchers:
        return True
    have = dict(labels)
    return all(have.get(k) == v for k, v in matchers.items())


def labels_json(labels: Labels) -> str:
    """The canonical JSON spelling of a label set, as stored in ``series.labels``."""
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Sample(NamedTuple):
    """One value of one canonical signal (see ``signals.py``) at one instant.

    ``ts`` is Unix time in seconds. ``signal`` is the canonical name without the
    ``gpuwarden_`` prefix; histogram buckets use ``<signal>_bucket`` with an ``le``
    label, and ``<signal>_count`` / ``<signal>_sum``, as in the Prometheus model.

    A NamedTuple, not a frozen dataclass: thousands are made every cycle (a 250 KB
    vLLM scrape maps to ~630), and a frozen dataclass's ``__init__`` costs 2.4x as much.
    """

    signal: str
    labels: Labels
    value: float
    ts: float


@dataclass(frozen=True, slots=True)
class SeriesData:
    """The samples of one series over a time range, oldest first."""

    signal: str
    labels: Labels
    timestamps: FloatArray = field(repr=False)
    values: FloatArray = field(repr=False)

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True, slots=True)
class SelfMetric:
    """One family of gpuwarden's own health metrics (name without the ``gpuwarden_``
    prefix): what a part (collector runner, rule engine, dispatcher, store) reports about
    itself for ``/metrics``."""

    name: str
    kind: str  # "gauge" | "counter"
    help: str
    samples: tuple[tuple[Mapping[str, str], float], ...]
