"""Parsing one server's scrapes when, as usual, only the values changed since the last.

A server's ``/metrics`` prints the same lines every scrape, with new numbers: the same
series in the same order, the same ``# HELP``/``# TYPE`` text. :class:`ParseMemo` keeps
what a full :func:`promtext.parse` of one payload found, line by line, as a
:class:`Template`; a later payload whose every line is the same text, up to the value
of the lines that were samples, is then read by swapping the values in: one
``str.split`` and a few comparisons in C instead of the line regex, and one ``float()``
per sample read.

Why it gives exactly what ``parse`` gives: a line the template reuses is

* identical text (comments, ``# HELP``/``# TYPE``, blank lines, anything else), or
* a sample line of the one plain spelling ``name{labels} value`` (``MEMO_SAMPLE_RE``)
  whose text before the value is identical and whose new value is a number as the line
  regex reads it (``VALUES_RE``, at most 64 characters, so the line stays within the
  line length limit): the line regex reads the same name and labels, and the value,
  from it; or
* a line of a family ``only=`` lets the parser skip, starting with that family's name:
  ``parse`` decides what to skip from the ``# HELP``/``# TYPE`` lines (identical, at the
  same line numbers) and from how many of the section's lines start with the family's
  name (every one of them, as in the template's payload), and never reads the rest.
  The template keeps the family's name once, not a prefix per line: at 280 KB payloads
  those per-line strings were ~220 KiB of its ~1 MiB per server.

So the line numbers, the families skipped, the HELP/TYPE text and every sample's name
and labels are those of the template's payload, and ``parse`` would give the same
result with the new values. A template is only made from a payload that parsed
without a rejected line and within its time budget (so there is no error message to
reproduce), and only after checking that it rebuilds that payload's parse exactly. So
the parser's strictness holds here too: a line it refuses (a ``#`` or a timestamp after
a value in the text format, an unknown ``# TYPE`` word) is never in a template, a
changed ``# TYPE`` line is a changed constant line, and a value token with anything
after the number fails ``VALUES_RE``: each of them is a full ``parse``.
Anything else (a new series, a timestamp, a changed comment, one bad value) is a full
``parse``, which learns the new layout. A server whose layout changes on every scrape
(timestamps on its samples, a label holding a request id) stops being learned from:
the attempts back off to one in :data:`MAX_BACKOFF` scrapes, so they cost at most a
fraction of the parse they would save.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import getitem, itemgetter

from gpuwarden.collector.promtext import Exposition, _decode, _plan, parse
from gpuwarden.collector.promtext_lexer import MAX_LINE_CHARS, MEMO_SAMPLE_RE, VALUES_RE

__all__ = ["MAX_BACKOFF", "MAX_LINES", "ParseMemo", "Template", "learn"]

#: Longest value a template swaps in; a longer one (a 300-digit number) is a full parse.
MAX_VALUE_CHARS = 64
#: Payloads of more lines are parsed in full, never memoised: the memo splits a payload
#: into one string per line (~50 bytes each beyond the text), which the full parse
#: never holds at once. A vLLM scrape has ~600 lines, one serving 100 LoRA adapters
#: ~20,000; the memo of 65,536 lines holds about their text (a few MB) per server.
MAX_LINES = 65536
#: After a failed attempt to learn a template, or one never used, the next attempt waits
#: this many scrapes at most (doubling from 1).
MAX_BACKOFF = 64

_Getter = Callable[[Sequence[str]], tuple[str, ...]]
_FloatGetter = Callable[[Sequence[float]], tuple[float, ...]]


def _getter(idx: Sequence[int]) -> Callable[[Sequence[object]], tuple[object, ...]]:
    """``itemgetter`` that always returns a tuple (itemgetter(i) returns the item)."""
    if len(idx) == 1:
        (i,) = idx
        return lambda seq: (seq[i],)
    if not idx:
        return lambda seq: ()
    return itemgetter(*idx)


@dataclass(frozen=True, slots=True)
class Template:
    """The line layout of one payload (module docstring); immutable, so shareable."""

    only: frozenset[str] | None
    n_lines: int  # pieces of ``text.split("\n")``, the empty one after the last newline
    const_get: _Getter  # the lines that must be identical ...
    const_lines: tuple[str, ...]  # ... and their text
    checked_get: _Getter  # the sample lines, then the skipped lines ...
    prefixes: tuple[str, ...]  # ... and the text each must start with
    value_slices: tuple[slice, ...]  # per sample line: where its value is
    # Per sample name, in payload order: its label strings, the positions of their
    # values among the values, and a getter of those.
    layout: tuple[tuple[str, tuple[str, ...], tuple[int, ...], _FloatGetter], ...]
    types: dict[str, str]
    helps: dict[str, str]
    skipped_lines: int

    def values(self, text: str) -> list[float] | None:
        """The sample values of ``text`` (decoded), or None if it does not fit."""
        lines = text.split("\n")
        if len(lines) != self.n_lines or self.const_get(lines) != self.const_lines:
            return None
        checked = self.checked_get(lines)
        if not all(map(str.startswith, checked, self.prefixes)):
            return None
        tokens: list[str] = list(map(getitem, checked, self.value_slices))
        if tokens and (max(map(len, tokens)) > MAX_VALUE_CHARS
                       or VALUES_RE.fullmatch("\n".join(tokens) + "\n") is None):
            return None
        return list(map(float, tokens))

    def exposition(self, values: Sequence[float]) -> Exposition:
        """The payload's :class:`Exposition` with these sample values."""
        none: float | None = None
        samples = {name: list(zip(raws, get(values), repeat(none), strict=False))
                   for name, raws, _slots, get in self.layout}
        return Exposition(samples=samples, types=dict(self.types), helps=dict(self.helps),
                          skipped_lines=self.skipped_lines)

    def summary(self) -> Exposition:
        """The payload's :class:`Exposition` less its samples (no rejected line, not
        truncated), for a caller that took the values another way."""
        return Exposition(types=dict(self.types), helps=dict(self.helps),
                          skipped_lines=self.skipped_lines)

    def layout_slots(self) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
        """Per sample name: its label strings and the positions of their values."""
        return [(name, raws, slots) for name, raws, slots, _get in self.layout]


def _same(a: Exposition, b: Exposition) -> bool:
    """Equal, with floats compared bit for bit (NaN equals NaN, -0.0 is not 0.0)."""
    if (list(a.samples) != list(b.samples) or a.types != b.types or a.helps != b.helps
            or a.skipped_lines != b.skipped_lines or a.invalid_lines != b.invalid_lines
            or a.errors != b.errors or a.truncated != b.truncated):
        return False
    for name, got in a.samples.items():
        want = b.samples[name]
        if len(got) != len(want):
            return False
        for (raw1, v1, t1), (raw2, v2, t2) in zip(got, want, strict=True):
            if raw1 != raw2 or t1 != t2 or not (
                (v1 == v2 and math.copysign(1.0, v1) == math.copysign(1.0, v2))
                or (math.isnan(v1) and math.isnan(v2))
            ):
                return False
    return True


def learn(text: str, exp: Exposition, only: frozenset[str] | None) -> Template | None:
    """The template of ``text`` (decoded, as ``parse`` decodes it) whose full parse is
    ``exp``; None when it has no usable one (a rejected line, a timestamp...)."""
    if (exp.invalid_lines or exp.errors or exp.truncated or not text.endswith("\n")
            or text.count("\n") > MAX_LINES):
        return None
    lines = text.split("\n")
    const: list[int] = []
    checked: list[int] = []  # sample lines
    prefixes: list[str] = []
    free: list[int] = []  # lines of skipped families
    free_prefixes: list[str] = []
    names: dict[str, tuple[list[str], list[int]]] = {}
    ranges = [(0, len(text), 0)] if only is None else _plan(text, only)
    line = 0  # index of the first line of the current range
    done = False  # from ``# EOF`` on, every line is kept as it is
    for first, last, skipped in ranges:
        end = line + text.count("\n", first, last)
        family = ""
        if skipped:  # a section that opens with its family's # HELP or # TYPE line
            head = lines[line].split(" ", 3)
            if len(head) < 3 or head[0] != "#" or head[1] not in ("HELP", "TYPE"):
                return None
            family = head[2]
        for i in range(line, end):
            s = lines[i]
            if done or not s or s[0] == "#" or s[0].isspace():
                if "# EOF" in s:
                    done = True
                const.append(i)
            elif skipped:
                if not s.startswith(family):
                    return None  # _plan would not have skipped it
                free.append(i)
                free_prefixes.append(family)
            elif (m := MEMO_SAMPLE_RE.fullmatch(s)) is not None:
                cut = m.start(3)
                if cut > MAX_LINE_CHARS - 2 * MAX_VALUE_CHARS:
                    return None
                checked.append(i)
                prefixes.append(s[:cut])
                raws, slots = names.setdefault(m.group(1), ([], []))
                raws.append(m.group(2) or "")
                slots.append(len(checked) - 1)
            else:
                const.append(i)  # the verification below fails if this was a sample
        line = end
    const.extend(range(line, len(lines)))  # the empty piece after the last newline
    # One slice object per prefix length, not per line (56 bytes each; a 280 KB payload
    # has ~6,500 sample lines and a few hundred distinct prefix lengths).
    by_length: dict[int, slice] = {}
    template = Template(
        only=only,
        n_lines=len(lines),
        const_get=_getter(const),  # type: ignore[arg-type]
        const_lines=tuple(lines[i] for i in const),
        checked_get=_getter(checked + free),  # type: ignore[arg-type]
        prefixes=tuple(prefixes + free_prefixes),
        value_slices=tuple(by_length.setdefault(len(p), slice(len(p), None))
                           for p in prefixes),
        layout=tuple((name, tuple(raws), tuple(slots), _getter(slots))  # type: ignore[misc]
                     for name, (raws, slots) in names.items()),
        types=dict(exp.types),
        helps=dict(exp.helps),
        skipped_lines=exp.skipped_lines,
    )
    values = template.values(text)
    if values is None or not _same(template.exposition(values), exp):
        return None
    return template


class ParseMemo:
    """``parse`` for one server's successive scrapes, reusing the last layout (module
    docstring). Safe to share between threads: a call that finds another one running
    parses in full."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.template: Template | None = None
        self._used = False  # the template has served a scrape since it was learned
        self._backoff = 1
        self._wait = 0  # scrapes left before the next attempt to learn
        self.hits = 0  # scrapes served from a template (for tests and benchmarks)

    def parse(
        self,
        data: bytes,
        *,
        max_bytes: int,
        max_seconds: float,
        only: frozenset[str] | None,
    ) -> Exposition:
        """What ``promtext.parse(data, ...)`` returns (module docstring)."""
        got = self.read(data, max_bytes=max_bytes, max_seconds=max_seconds, only=only)
        if isinstance(got, Exposition):
            return got
        template, values = got
        return template.exposition(values)

    def read(
        self,
        data: bytes,
        *,
        max_bytes: int,
        max_seconds: float,
        only: frozenset[str] | None,
    ) -> Exposition | tuple[Template, list[float]]:
        """The payload's template and sample values when it fits the last one, else its
        full parse (from which the next template is learned)."""
        if not self._lock.acquire(blocking=False):
            return parse(data, max_bytes=max_bytes, max_seconds=max_seconds, only=only)
        try:
            return self._read(data, max_bytes, max_seconds, only)
        finally:
            self._lock.release()

    def _read(self, data: bytes, max_bytes: int, max_seconds: float,
              only: frozenset[str] | None) -> Exposition | tuple[Template, list[float]]:
        text = _decode(data, max_bytes)
        if text.count("\n") > MAX_LINES:
            self.template = None
            return parse(data, max_bytes=max_bytes, max_seconds=max_seconds, only=only)
        template = self.template
        if template is not None and template.only is only:
            values = template.values(text)
            if values is not None:
                self._used, self._backoff = True, 1
                self.hits += 1
                return template, values
        if template is not None:
            self.template = None
            if not self._used:  # learned, then never fitted: the layout keeps changing
                self._backoff = min(2 * self._backoff, MAX_BACKOFF)
                self._wait = self._backoff
        # The bytes, not ``text``: decoding twice would strip a second BOM.
        exp = parse(data, max_bytes=max_bytes, max_seconds=max_seconds, only=only)
        if self._wait > 0:
            self._wait -= 1
            return exp
        self.template = learn(text, exp, only)
        self._used = False
        if self.template is None:
            self._backoff = min(2 * self._backoff, MAX_BACKOFF)
            self._wait = self._backoff
        return exp
