"""gpuwarden's own ``/metrics``: Prometheus text written straight from a snapshot.

The daemon hands over an immutable :class:`Snapshot` at the end of every cycle. The
text is rendered at most once per snapshot, by the first scrape that wants it, and
later scrapes of the same snapshot get the cached bytes: Prometheus scrapes every
15-60 s while cycles run every second, so rendering every cycle up front would be
mostly wasted. Where a scraper's next scrape is due before the next snapshot, the
snapshot is rendered as it is handed over instead, so that the scrape does not wait
for a render that shares the GIL with a cycle (``scrape_forecast.py``). The live
figures, which the store writer moves after the cycle (see :class:`Snapshot`), are
rendered apart and again alone when they move. A GPU that vanished simply is not in
the next snapshot: there are no long-lived gauges to clean up (ARCHITECTURE.md,
convention 2).

The text is byte for byte what prometheus_client's ``generate_latest`` printed over
the same families (a custom collector building a ``Metric`` per family and a sample
object per sample: the daemon did that until issue 14, and
tests/api/test_exposition_reference.py keeps it as the reference to compare with).
Written here directly from the ``Sample`` tuples instead, for two reasons: that render
took ~8 ms of CPU at 280 KB server payloads (7,000 samples; 30 ms on the wire while
the cycle held the GIL), where this one looks up each series' line prefix -- name and
escaped labels, cached from one render to the next -- and formats the value; and
importing prometheus_client is not needed to answer the first scrape, which
``Daemon.start`` serves before the store and the heavy libraries are loaded.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gpuwarden import __version__
from gpuwarden.api.scrape_forecast import ScrapeForecast
from gpuwarden.api.textformat import family_header, line_prefix
from gpuwarden.model import Labels, Sample, SelfMetric
from gpuwarden.promql.gofloat import go_float
from gpuwarden.signals import SIGNALS, Kind

if TYPE_CHECKING:
    from gpuwarden.api.process_metrics import ProcessMetrics

PREFIX = "gpuwarden_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything ``/metrics`` shows, as of the end of one cycle; ``live``'s families as
    of the render (figures another thread moves after the cycle: the store writer's).
    Whoever moves them calls :meth:`Exposition.refresh` so that the next scrape sees it."""

    samples: tuple[Sample, ...] = ()
    self_metrics: tuple[SelfMetric, ...] = ()
    info: Mapping[str, str] = field(default_factory=dict)
    live: Callable[[], tuple[SelfMetric, ...]] | None = None


class _Family:
    """One exported signal: its header and its series' line prefixes, kept across
    renders (a series seen once is usually in every snapshot after)."""

    __slots__ = ("header", "prefixes", "sample_name")

    def __init__(self, header: str, sample_name: str) -> None:
        self.header = header
        self.sample_name = sample_name
        self.prefixes: dict[Labels, str] = {}


class _SelfFamilies:
    """Writes gpuwarden's own families; their headers and line prefixes, which are mostly
    the same from one render to the next (every known counter label set is there from
    the start, at 0), are kept: (family header fields) -> header, (sample name, labels
    as given) -> line prefix."""

    def __init__(self) -> None:
        self._headers: dict[tuple[str, str, str], str] = {}
        self._prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}

    def render(self, families: tuple[SelfMetric, ...], out: list[str]) -> None:
        headers, prefixes = self._headers, self._prefixes
        if len(prefixes) > 2 * sum(len(sm.samples) for sm in families) + 256:
            prefixes.clear()  # series of collectors, rules, actions gone since a reload
            headers.clear()
        for sm in families:
            head_key = (sm.name, sm.help, sm.kind)
            header = headers.get(head_key)
            if header is None:
                header = headers[head_key] = family_header(PREFIX + sm.name, sm.help, sm.kind)
            out.append(header)
            sample_name = PREFIX + sm.name + ("_total" if sm.kind == "counter" else "")
            for labels, value in sm.samples:
                key = (sample_name, tuple(labels.items()))
                prefix = prefixes.get(key)
                if prefix is None:
                    prefix = prefixes[key] = line_prefix(sample_name, key[1])
                out.append(f"{prefix}{go_float(value)}\n")


@dataclass(frozen=True, slots=True)
class _Text:
    """A snapshot's text, and where the live families are in it: between the others
    (where they always were), so that they can be rendered again alone."""

    body: bytes
    live_from: int
    live_to: int

    @classmethod
    def of(cls, head: bytes, live: bytes, tail: bytes) -> _Text:
        """``head`` (the samples and the self-metrics), ``live`` (``Snapshot.live``'s
        families), ``tail`` (build info and the process families), in one."""
        return cls(b"".join((head, live, tail)), len(head), len(head) + len(live))

    def with_live(self, live: bytes) -> _Text:
        return _Text.of(self.body[:self.live_from], live, self.body[self.live_to:])


class _Renderer:
    """Writes a snapshot's text; owns the caches (used under ``Exposition``'s lock)."""

    def __init__(self, process: ProcessMetrics | None) -> None:
        self._process = process
        # signal -> family, or None for a signal that is not exported; the histogram
        # signals, exported only when their quantiles are passed in, under "?"+signal.
        self._families: dict[str, _Family | None] = {}
        self._cached = 0  # line prefixes made since the caches were last emptied
        self._self = _SelfFamilies()
        self._live = _SelfFamilies()

    def render(self, snap: Snapshot) -> _Text:
        grouped: defaultdict[str, list[Sample]] = defaultdict(list)
        for sample in snap.samples:
            grouped[sample.signal].append(sample)
        if self._cached > 2 * len(snap.samples) + 1024:
            # Series come and go (models, GPUs): forget the gone ones, bounded memory.
            self._families.clear()
            self._cached = 0
        out: list[str] = []
        for signal, group in sorted(grouped.items()):
            family = self._family(signal, group)
            if family is None:
                continue
            out.append(family.header)
            prefixes, name = family.prefixes, family.sample_name
            for s in group:
                prefix = prefixes.get(s.labels)
                if prefix is None:
                    prefix = prefixes[s.labels] = line_prefix(name, s.labels)
                    self._cached += 1
                out.append(f"{prefix}{go_float(s.value)}\n")
        self._self.render(snap.self_metrics, out)
        tail: list[str] = []
        if snap.info:
            tail.append(family_header(PREFIX + "build", "gpuwarden version and data sources",
                                      "info"))
            labels = {"version": __version__, **snap.info}
            tail.append(f"{line_prefix(PREFIX + 'build_info', labels.items())}1.0\n")
        if self._process is not None:
            tail.append(self._process.text())
        return _Text.of("".join(out).encode(), self.render_live(snap), "".join(tail).encode())

    def render_live(self, snap: Snapshot) -> bytes:
        if snap.live is None:
            return b""
        out: list[str] = []
        self._live.render(snap.live(), out)
        return "".join(out).encode()

    def _family(self, signal: str, group: list[Sample]) -> _Family | None:
        spec = SIGNALS.get(signal)
        if spec is not None and spec.kind is Kind.HISTOGRAM:
            # Raw buckets stay internal; histograms are exported as window quantiles,
            # which the daemon derives and passes in under the histogram's own name
            # with a ``quantile`` label.
            if not any(k == "quantile" for k, _ in group[0].labels):
                return None
            key = "?" + signal
            if key not in self._families:
                self._families[key] = _Family(
                    family_header(PREFIX + signal, spec.help + " (quantiles over the window)",
                                  "summary"), PREFIX + signal)
            return self._families[key]
        if signal in self._families:
            return self._families[signal]
        family = None
        if spec is not None:
            is_counter = spec.kind is Kind.COUNTER
            base = PREFIX + (signal[: -len("_total")] if is_counter else signal)
            family = _Family(family_header(base, spec.help, "counter" if is_counter else "gauge"),
                             base + "_total" if is_counter else base)
        self._families[signal] = family
        return family


class Exposition:
    """Renders snapshots to Prometheus text and keeps the latest bytes for scrapes.

    A snapshot is rendered by the first read after it, or as it is handed over where a
    scraper is due before the next one (``scrape_forecast.py``). Its live families are
    rendered again alone after :meth:`refresh`.
    """

    def __init__(self, *, process_metrics: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        process = None
        if process_metrics:
            from gpuwarden.api.process_metrics import ProcessMetrics

            process = ProcessMetrics()
        self._renderer = _Renderer(process)
        self._clock = clock
        self._forecast = ScrapeForecast()
        self._lock = threading.Lock()
        self._text = _Text(b"", 0, 0)
        self._unrendered: Snapshot | None = None
        self._rendered: Snapshot | None = None  # what _text shows
        self._live_moved = False  # since _text was made
        self.renders_total = 0  # whole snapshots rendered
        self.ahead_total = 0  # of those, rendered as handed over for a forecast scrape

    def update(self, snapshot: Snapshot, next_in: float | None = None) -> None:
        """Make ``snapshot`` what the next scrape shows. Rendered then, or now if a
        scraper is due before ``next_in`` seconds have passed (when the cycle hands over
        the next snapshot)."""
        with self._lock:
            self._unrendered = snapshot
            if next_in is not None and self._forecast.due(self._clock(), next_in):
                self.ahead_total += 1
                self._render_unrendered()

    def refresh(self) -> None:
        """The latest snapshot's live figures moved: the next scrape renders them again
        rather than serve the text rendered before they moved."""
        with self._lock:
            if self._unrendered is None and self._rendered is not None \
                    and self._rendered.live is not None:
                self._live_moved = True

    def render(self, snapshot: Snapshot) -> bytes:
        with self._lock:  # the renderer's caches are shared by every render
            self.renders_total += 1
            return self._renderer.render(snapshot).body

    @property
    def body(self) -> bytes:
        """The latest snapshot as Prometheus text, rendered on the first read after it."""
        with self._lock:
            return self._latest()

    def scraped_by(self, client: str) -> bytes:
        """:attr:`body`, for a scrape from ``client`` (an address), which the forecast of
        when it scrapes next learns from."""
        with self._lock:
            self._forecast.scraped(client, self._clock())
            return self._latest()

    def _latest(self) -> bytes:
        if self._unrendered is not None:
            self._render_unrendered()
        elif self._live_moved and self._rendered is not None:
            self._text = self._text.with_live(self._renderer.render_live(self._rendered))
            self._live_moved = False
        return self._text.body

    def _render_unrendered(self) -> None:
        snapshot = self._unrendered
        if snapshot is None:
            return
        self.renders_total += 1
        self._text = self._renderer.render(snapshot)
        self._rendered, self._unrendered = snapshot, None
        self._live_moved = False
