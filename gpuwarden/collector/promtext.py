"""A fast, tolerant parser for the Prometheus text exposition format (and OpenMetrics text).

Why not ``prometheus_client.parser``: it builds a ``Sample`` with a parsed label dict for
every line, walks label strings character by character in Python and runs at a few MB/s.
gpuwarden scrapes every inference server on the node every few seconds and only ever looks
at a few dozen sample names, so this parser

* runs one precompiled, anchored regex over the whole payload with ``re.findall`` (the
  per-line work happens in C); the regex fully validates the common line shape
  ``name{labels} value [timestamp]`` including quoted label values with ``}``, ``,``,
  ``=``, spaces and escapes, so no separate slow tokenizer is needed for those;
* keeps the raw label string (exactly as between the braces) as the series identity and
  parses labels only on demand (:meth:`Exposition.get`, :func:`parse_labels`, cached);
* skips, counts (``invalid_lines``) and records (the first 100, in ``errors``) bad lines
  instead of failing the whole scrape, because one broken line from a third-party
  server must not blind the node's monitoring; a payload with no valid sample at all
  but some invalid lines (an HTML error page, JSON) is an error.
* is linear on any input, because the payload comes from the network: every regex
  repetition is possessive and no two adjacent ones can match the same character (a
  name followed by 20,000 tabs used to cost 3 s of backtracking); a line longer than
  64 KiB is rejected by its length without any regex; runs of blank, comment and junk
  lines are consumed by one match in C. Measured (bench/bench_parser.py): every hostile
  1 MB input of the benchmark parses within ~2x of a valid 1 MB vLLM payload, and an
  input of many short lines within ~2x of a valid payload with as many lines (a line
  costs Python work whatever it holds: 1 MB of ``a 1`` samples takes ~8-15x as long as
  1 MB of vLLM-shaped lines, valid or not).
* holds its time budget: the clock is checked between chunks of at most 64 KiB; when
  it runs out, the samples parsed so far are returned (``truncated``) rather than lost.
* can skip whole families nobody reads (``only=``): a vLLM scrape is ~80 % histograms
  gpuwarden never maps (queue, prefill, decode time, token counts...). Lines are only
  skipped when the family's ``# HELP``/``# TYPE`` section holds nothing but comments and
  lines starting with that family's name, and no wanted name starts with it, so no
  wanted sample can be skipped whatever the payload's layout; the price is that a
  malformed line inside a skipped family is not counted in ``errors``.

Timestamps: Prometheus text carries integer milliseconds, OpenMetrics float seconds; both
are stored as float seconds. The payload is treated as OpenMetrics when it contains a
``# EOF`` or ``# UNIT`` line (or when ``openmetrics=True`` is passed, e.g. from the
response Content-Type). Text-format timestamps are divided by 1000 exactly as
``prometheus_client`` does (``int(ts) / 1000``).

Strict where Prometheus' text parser (``model/textparse/promparse.go``) is: in the text
format, a sample line ends after its value and an optional timestamp of integer
milliseconds (an int64), so a ``#`` there (an exemplar, which only OpenMetrics has) makes
the line invalid; a ``# TYPE`` must name one of the format's types, exactly (one blank
before the word, none after); values are what Go's ``ParseFloat`` reads as Prometheus
calls it (no ``_``, no hex, no sign before NaN). Prometheus fails the scrape on such a
line; here it is one rejected line like any other (counted, listed in ``errors``).

Deliberately unsupported (rejected and recorded in ``errors``): Prometheus 3 quoted UTF-8
metric/label names (``{"my.metric", "a.b"="x"}``) and ``{__name__="..."}`` without a
leading name. Unquoted label names may contain ``-``, ``.`` and ``:`` (dcgm-exporter can
be configured to emit e.g. ``test-uuid``), which is more lenient than Prometheus.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache

from gpuwarden.collector.promtext_lexer import (
    INVALID_IN_RUN_RE,
    LINE_OM_RE,
    LINE_RE,
    MAX_LINE_CHARS,
    META_RE,
    METRIC_NAME_RE,
    SECTION_RE,
    SLOW_OM_RE,
    SLOW_RE,
    diagnose,
    metric_types,
    parse_labels,
    snippet,
    timestamp_seconds,
    unescape_help,
)
from gpuwarden.errors import ExpositionParseError

__all__ = ["DEFAULT_MAX_BYTES", "Exposition", "parse"]

DEFAULT_MAX_BYTES = 16 * 1024 * 1024

# ``Exposition.errors`` keeps this many messages; every rejected line is still counted
# in ``Exposition.invalid_lines``. Formatting a message per line of a junk payload
# would cost more than parsing the valid lines around it.
_MAX_ERRORS = 100


@dataclass(slots=True)
class Exposition:
    """One parsed payload.

    ``samples`` maps a sample name (``vllm:time_to_first_token_seconds_bucket``, not the
    family name) to ``(raw_labels, value, timestamp_seconds_or_None)`` in payload order;
    ``raw_labels`` is the text between the braces, verbatim, so it doubles as a cheap
    series key. ``types``/``helps`` are keyed by the family name of ``# TYPE``/``# HELP``.
    ``errors`` has one ``"line N: why"`` entry per rejected line, for the first
    ``_MAX_ERRORS`` (100) of them, plus one entry when the time budget cut the parse
    short; ``invalid_lines`` counts every rejected line; ``truncated`` is True when the
    time budget stopped the parse before the end (what was parsed until then is kept).
    """

    samples: dict[str, list[tuple[str, float, float | None]]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    skipped_lines: int = 0  # sample lines of families skipped by ``only=``, not parsed
    invalid_lines: int = 0  # every rejected line, listed in ``errors`` or not
    truncated: bool = False  # the time budget stopped the parse; the rest is unparsed

    def reject(self, line_no: int, why: str) -> None:
        """Count one rejected line; keep its message while fewer than the cap are kept."""
        self.invalid_lines += 1
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(f"line {line_no}: {why}")

    def get(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Parsed labels and value of every sample called ``name``; ``[]`` when absent.

        A sample whose label string the line regex accepted but that still is not a valid
        label set (only possible with a duplicated label name) is skipped: the fast path
        cannot see duplicates, and a mapper should not crash on one bad series.
        """
        out: list[tuple[dict[str, str], float]] = []
        for raw, value, _ts in self.samples.get(name, ()):
            try:
                labels = parse_labels(raw)
            except ValueError:
                continue
            out.append((labels, value))
        return out


def _add_meta(
    exp: Exposition, line_no: int, kind: str, name: str, rest: str, *, om: bool
) -> None:
    """Record one ``# HELP``/``# TYPE`` line (its name already validated).

    ``rest`` is the text after the one blank that follows the name. A type must be
    exactly one of the format's words, as Prometheus' parsers require: a misspelt type,
    a second blank before it or one after it make the line invalid.
    """
    if kind == "TYPE":
        if rest in metric_types(om):
            exp.types[name] = rest
        elif not rest.strip():
            exp.reject(line_no, f"# TYPE without a type: {name!r}")
        else:
            known = ", ".join(sorted(metric_types(om)))
            exp.reject(line_no, f"invalid metric type {snippet(rest)} for {name!r} (the "
                                f"{'OpenMetrics' if om else 'Prometheus text'} format "
                                f"knows {known})")
    else:
        rest = rest.strip()
        if "\\" in rest:
            rest = unescape_help(rest, openmetrics=om)
        exp.helps[name] = rest


def _slow_line(line: str, line_no: int, exp: Exposition, om: bool) -> bool:
    """Handle a line the line regex left to Python; return True on ``# EOF``.

    In a chunk that is only ``# EOF``; it also handles a last line without its newline
    (a comment), so it covers every spelling: comments with tabs or several blanks,
    samples with blanks around ``{``/``=``/``,``, and records why anything else was
    rejected. Lines longer than ``MAX_LINE_CHARS`` are rejected by length alone.
    """
    if len(line) > MAX_LINE_CHARS:
        exp.reject(line_no, f"line longer than {MAX_LINE_CHARS} characters, not parsed: "
                            f"{snippet(line)}")
        return False
    s = line.strip()
    if not s:
        return False
    if s[0] == "#":
        if s == "# EOF":
            return True
        m = META_RE.fullmatch(line.lstrip())  # trailing blanks belong to a type word
        if m is not None:
            kind, name, rest = m.groups()
            if name is None or METRIC_NAME_RE.fullmatch(name) is None:
                exp.reject(line_no, f"invalid metric name in # {kind}: {snippet(s)}")
            else:
                _add_meta(exp, line_no, kind, name, rest or "", om=om)
        return False
    sm = (SLOW_OM_RE if om else SLOW_RE).fullmatch(line)
    if sm is None:
        exp.reject(line_no, diagnose(line, openmetrics=om))
        return False
    name, raw, value, ts = sm.groups()
    try:
        v = float(value)
        t = None if ts is None else timestamp_seconds(ts, om)
    except ValueError:  # a timestamp beyond int64 milliseconds
        exp.reject(line_no, f"invalid value or timestamp: {snippet(s)}")
        return False
    exp.samples.setdefault(name, []).append((raw or "", v, t))
    return False


def _decode(data: bytes | str, max_bytes: int) -> str:
    """Size-check before decoding (a huge payload must not cost a decode), then decode."""
    if isinstance(data, str):
        too_big = len(data) > max_bytes or (
            not data.isascii() and len(data) * 4 > max_bytes
            and len(data.encode("utf-8", "surrogatepass")) > max_bytes
        )
        if too_big:
            raise ExpositionParseError(f"payload larger than {max_bytes} bytes")
        text = data
    else:
        if len(data) > max_bytes:
            raise ExpositionParseError(f"payload of {len(data)} bytes exceeds {max_bytes}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExpositionParseError(f"payload is not UTF-8: {exc}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text


@lru_cache(maxsize=4096)
def _family_unread(only: frozenset[str], family: str) -> bool:
    """True when no wanted sample name starts with ``family``: its lines can go unparsed."""
    return not any(name.startswith(family) for name in only)


def _plan(text: str, only: frozenset[str]) -> list[tuple[int, int, int]]:
    """Split ``text`` (every line newline-terminated) into ``(start, end, skipped)`` ranges.

    ``skipped`` is 0 for a range to parse, else the number of sample lines in a family
    section that can go unparsed: one whose name no wanted name starts with, and whose
    every line is one of its ``# HELP``/``# TYPE`` lines or starts with the family name
    (checked by counting, so no line of another family can hide in it). Everything else,
    including text before the first section and from ``# EOF`` on, is parsed.
    """
    at_start = text.startswith("# ")
    starts: list[int] = []  # where each section's first line starts
    families: list[str | None] = []  # None: the ``# EOF`` line
    metas: list[int] = []  # its HELP/TYPE lines
    for m in SECTION_RE.finditer("\n" + text if at_start else text):
        family = m.group(1)
        if family is not None and families and families[-1] == family:
            metas[-1] += 1  # HELP and TYPE of one family open one section
            continue
        starts.append(m.start() + (0 if at_start else 1))
        families.append(family)
        metas.append(1)
        if family is None:
            break
    plan: list[tuple[int, int, int]] = []
    pos = 0
    for i, (start, family) in enumerate(zip(starts, families, strict=True)):
        if family is None:
            break
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        if not _family_unread(only, family):
            continue
        own = text.count("\n" + family, start, end)
        if text.count("\n", start, end) != metas[i] + own:
            continue  # something else lives in this section: parse it all
        if start > pos:
            plan.append((pos, start, 0))
        plan.append((start, end, own))
        pos = end
    if pos < len(text):
        plan.append((pos, len(text), 0))
    return plan


def parse(
    data: bytes | str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_seconds: float = 1.0,
    openmetrics: bool | None = None,
    only: frozenset[str] | None = None,
) -> Exposition:
    """Parse one scrape; bad lines are skipped, counted and listed in ``Exposition.errors``.

    Raises :class:`ExpositionParseError` when the payload is larger than ``max_bytes``,
    not UTF-8, or is clearly not an exposition (no valid sample and at least one bad
    line). ``max_seconds`` is a time budget, checked between chunks of at most 64 KiB of
    whole lines (a longer line is rejected unparsed), so the work between two checks is
    bounded: when it runs out, parsing stops and what was parsed so far is returned,
    with ``truncated=True`` and an error saying where it stopped; only when nothing
    usable was parsed by then is it an ``ExpositionParseError``.
    ``openmetrics`` forces the timestamp unit (None: detect from ``# EOF``/``# UNIT``).
    ``only``: the sample names the caller reads; families none of them can belong to are
    skipped unparsed where that is provably safe (see the module docstring) and counted
    in ``skipped_lines``. Every wanted sample is parsed exactly as without it.

    A multi-line payload whose last line has no terminating newline was cut off in
    transit (the format requires the newline); that last line is rejected unless it is
    a comment, because a cut ``123.0`` reads as a plausible but wrong ``12``.
    Cost: linear in the payload's size, and per line no more than a valid line's (runs
    of blank, comment or junk lines are skipped by one regex call, the first 100 bad
    lines get a message, the rest only a count).
    """
    start = time.perf_counter()
    text = _decode(data, max_bytes)
    if openmetrics is None:
        openmetrics = (
            text.startswith(("# EOF", "# UNIT "))
            or "\n# EOF" in text or "\n# UNIT " in text
        )
    exp = Exposition()
    samples = exp.samples
    errors = exp.errors
    samples_get = samples.get
    # The format decides what may follow a value: only OpenMetrics has exemplars.
    findall = (LINE_OM_RE if openmetrics else LINE_RE).findall
    values: dict[str, float] = {}
    values_get = values.get

    tail: str | None = None
    if not text:
        return exp
    if not text.endswith("\n"):
        if "\n" in text:
            text, _, tail = text.rpartition("\n")
        text += "\n"  # every range below ends with its newline
    n = len(text)

    line_no = 0  # number of the last line before the current range or chunk
    eof = False
    for first, last, skipped in [(0, n, 0)] if only is None else _plan(text, only):
        if eof or exp.truncated:
            break
        if skipped:
            exp.skipped_lines += skipped
            line_no += text.count("\n", first, last)
            continue
        pos = first
        while pos < last and not eof:
            if pos > 0 and time.perf_counter() - start > max_seconds:
                exp.truncated = True
                exp.errors.append(
                    f"line {line_no + 1}: parsing stopped, time budget of {max_seconds}s "
                    f"spent; the remaining {n - pos} characters were not parsed")
                break
            end = _chunk_end(text, pos, last)
            if end <= pos:  # a line longer than MAX_LINE_CHARS starts at pos
                end = text.find("\n", pos, last) + 1 or last
                line_no += 1
                exp.reject(line_no, f"line longer than {MAX_LINE_CHARS} characters "
                                    f"({end - pos - 1}), not parsed: {snippet(text[pos:end])}")
                pos = end
                continue
            chunk = text if (pos == 0 and end == n) else text[pos:end]
            extra = 0  # lines of runs beyond their first, so far in this chunk
            for i, (name, raw, value, ts, kind, fam, rest, run, other) in enumerate(
                findall(chunk), line_no + 1
            ):
                if not name:
                    if kind:
                        if METRIC_NAME_RE.fullmatch(fam) is None:
                            exp.invalid_lines += 1  # no message past the cap: no f-string
                            if len(errors) < _MAX_ERRORS:
                                errors.append(f"line {i + extra}: invalid metric name in "
                                              f"# {kind}: {snippet(f'# {kind} {fam} {rest}')}")
                        else:
                            _add_meta(exp, i + extra, kind, fam, rest, om=openmetrics)
                    elif run:
                        more = run.count("\n") - 1
                        if more or len(errors) < _MAX_ERRORS:
                            _run(exp, run, i + extra, openmetrics)
                            extra += more
                        elif run.lstrip()[:1] not in ("#", ""):  # one line, past the cap
                            exp.invalid_lines += 1
                    elif _slow_line(other, i + extra, exp, openmetrics):
                        eof = True
                        break
                    continue
                # The per-sample hot loop: float() of a str costs more than a dict hit,
                # and values repeat (bucket counts, 0.0). The regex admits only what
                # float() accepts, so no exception is expected here.
                v = values_get(value)
                if v is None:
                    try:
                        v = values[value] = float(value)
                    except ValueError:  # pragma: no cover - excluded by _VALUE
                        exp.reject(i + extra, f"{name}: invalid value {snippet(value)}")
                        continue
                t = None
                if ts:  # rare: exporters seldom write timestamps
                    try:
                        t = timestamp_seconds(ts, openmetrics)
                    except ValueError as exc:
                        exp.reject(i + extra, f"{name}: {exc}")
                        continue
                lst = samples_get(name)
                if lst is None:
                    lst = samples[name] = []
                lst.append((raw, v, t))
            line_no += chunk.count("\n")
            pos = end

    if tail is not None and not eof and not exp.truncated:
        s = tail.strip()
        if s.startswith("#"):
            _slow_line(tail, line_no + 1, exp, openmetrics)
        elif s:
            exp.reject(line_no + 1, f"no terminating newline, payload looks truncated: "
                                    f"{snippet(s)}")

    if not samples and not exp.skipped_lines and (exp.invalid_lines or exp.truncated):
        if exp.truncated:
            raise ExpositionParseError(
                f"parsing took longer than {max_seconds}s before any valid sample "
                f"(stopped at line {line_no + 1})")
        raise ExpositionParseError(
            f"not a Prometheus exposition: no valid sample, {exp.invalid_lines} bad "
            f"line(s); first: {exp.errors[0]}"
        )
    return exp


def _chunk_end(text: str, pos: int, last: int) -> int:
    """End of the next chunk: the whole lines from ``pos`` within ``MAX_LINE_CHARS``.

    Returns ``pos`` when the line starting at ``pos`` is longer than that (the caller
    rejects it without running a regex over it). The window is the line limit itself,
    so every line of a returned chunk is within the limit.
    """
    if last - pos <= MAX_LINE_CHARS:
        return last
    return text.rfind("\n", pos, pos + MAX_LINE_CHARS) + 1 or pos


def _run(exp: Exposition, run: str, first_line: int, om: bool) -> None:
    """Count the invalid lines of a run of non-sample lines; explain the first ones.

    Blank and comment lines of the run cost nothing in Python: only the invalid lines
    are visited, and only until ``_MAX_ERRORS`` messages are kept; the rest are counted.
    """
    at, line = 0, first_line
    for m in INVALID_IN_RUN_RE.finditer(run):
        if len(exp.errors) >= _MAX_ERRORS:
            exp.invalid_lines += len(INVALID_IN_RUN_RE.findall(run, m.start()))
            return
        line += run.count("\n", at, m.start())
        at = m.start()
        exp.reject(line, diagnose(m.group()[:-1], openmetrics=om))
