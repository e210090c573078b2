"""The text parser is strict where Prometheus' text parser is (``model/textparse``).

The invalid inputs are those of Prometheus' own parser tests (``promparse_test.go``),
restated here line by line, plus what the issue found accepted: text after a ``#``
following a value (an exemplar, which only OpenMetrics has), a ``# TYPE`` word that is
no type, a timestamp that is not integer milliseconds. Prometheus fails the whole scrape
on such a line; gpuwarden rejects the line the same way any bad line is rejected
(counted in ``invalid_lines``, explained in ``errors`` with its line number) and keeps
the valid lines around it. A payload that is not UTF-8 at all is refused as a whole.
The memo of an unchanged layout (``promtext_memo``) must not let any of them through.
"""

from __future__ import annotations

import math

import pytest

from gpuwarden.collector.promtext import Exposition, parse
from gpuwarden.collector.promtext_memo import ParseMemo
from gpuwarden.errors import ExpositionParseError

MAX = 16 * 1024 * 1024

# Lines Prometheus' text parser refuses, and the start of our explanation.
PROMETHEUS_INVALID = [
    ("a", "missing value"),  # a name and nothing else
    ("a{b='c'} 1", "malformed or unterminated label set"),  # single quotes
    ("a{b=", "malformed or unterminated label set"),  # the line ends inside the braces
    ("a true", "a: invalid value 'true'"),  # a word for a value
    ('something_weird{problem="', "malformed or unterminated label set"),  # open quote
    ('empty_label_name{=""} 0', "malformed or unterminated label set"),  # no label name
    ("foo 1_2", "foo: invalid value '1_2'"),  # digit separators are not Go's float syntax
    ("foo 0x1p-3", "foo: invalid value '0x1p-3'"),  # nor hexadecimal floats
    ("foo 0x1P-3", "foo: invalid value '0x1P-3'"),
    ("foo 0 1_2", "invalid value or timestamp"),  # nor separators in a timestamp
    ('{a="ok"} 1', "not a sample line"),  # a label set without a metric name
    ('{"a", "b = "c"}', "not a sample line"),  # quoted names (unsupported here anyway)
    # What the issue found accepted: a '#' after the value is an exemplar or a comment,
    # OpenMetrics only; Prometheus' text lexer has no token for it.
    ("x 1. # 7954", "'#' after the value"),
    ('m_bucket{le="1"} 5 # {trace_id="abc"} 0.5 1', "'#' after the value"),
    ("m 5 1000 # done", "'#' after the value"),
    ("m 5#x", "m: invalid value '5#x'"),
    # Timestamps are digits only: no sign, fraction or exponent, at most an int64.
    ("m 5 -1", "timestamp '-1' is not integer milliseconds"),
    ("m 5 +1", "timestamp '+1' is not integer milliseconds"),
    ("m 5 1.5", "timestamp '1.5' is not integer milliseconds"),
    ("m 5 1e3", "timestamp '1e3' is not integer milliseconds"),
    ("m 5 9223372036854775808", "m: timestamp '9223372036854775808' out of range"),
    ("m 5 " + "9" * 400, "m: timestamp '999"),
    # Go's float syntax has no sign before NaN.
    ("m -NaN", "m: invalid value '-NaN'"),
    ("m +nan", "m: invalid value '+nan'"),
]


@pytest.mark.parametrize(("line", "why"), PROMETHEUS_INVALID)
def test_a_line_prometheus_refuses_is_rejected_and_counted(line: str, why: str) -> None:
    exp = parse(f"before 1\n{line}\nafter 2\n")
    assert exp.invalid_lines == 1
    assert len(exp.errors) == 1 and exp.errors[0].startswith(f"line 2: {why}"), exp.errors
    assert exp.get("before") == [({}, 1.0)] and exp.get("after") == [({}, 2.0)]
    # The same line last, without its newline, takes the slow path: rejected as well.
    tail = parse(f"before 1\n{line}")
    assert tail.invalid_lines == 1 and list(tail.samples) == ["before"]


@pytest.mark.parametrize("line", [line for line, _ in PROMETHEUS_INVALID])
def test_a_payload_of_nothing_else_is_not_an_exposition(line: str) -> None:
    with pytest.raises(ExpositionParseError, match="no valid sample"):
        parse(f"{line}\n")


@pytest.mark.parametrize("data", [b'a{\xff="foo"} 1\n', b'a{b="\xff"} 1\n'])
def test_invalid_utf8_is_refused_as_a_payload(data: bytes) -> None:
    with pytest.raises(ExpositionParseError, match="not UTF-8"):
        parse(b"ok 1\n" + data)


@pytest.mark.parametrize(("line", "why"), [
    ("# TYPE x gaugeeconds", "invalid metric type 'gaugeeconds' for 'x'"),
    ("# TYPE x Counter", "invalid metric type 'Counter'"),  # the words are lower case
    ("# TYPE x  counter", "invalid metric type ' counter'"),  # a second blank before it
    ("# TYPE x counter ", "invalid metric type 'counter '"),  # a blank after it
    ("# TYPE x counter total", "invalid metric type 'counter total'"),
    ("# TYPE x unknown", "invalid metric type 'unknown'"),  # OpenMetrics' word, not text's
    ("# TYPE x gaugehistogram", "invalid metric type 'gaugehistogram'"),
    ("# TYPE x", "# TYPE without a type: 'x'"),
    ("# TYPE #", "invalid metric name in # TYPE"),
    ("# HELP #", "invalid metric name in # HELP"),
])
def test_a_type_prometheus_does_not_know_is_rejected(line: str, why: str) -> None:
    for text in (f"{line}\nx 1\n", f"x 1\n{line}"):  # fast path, then the last line
        exp = parse(text)
        assert exp.invalid_lines == 1 and why in exp.errors[0], exp.errors
        assert exp.types == {}
        assert exp.get("x") == [({}, 1.0)]  # the samples are still used


@pytest.mark.parametrize("typ", ["counter", "gauge", "histogram", "summary", "untyped"])
def test_every_text_format_type_is_read(typ: str) -> None:
    for line in (f"# TYPE x {typ}", f"# TYPE x\t{typ}", f"#\tTYPE\tx {typ}"):
        exp = parse(f"{line}\nx 1\n")
        assert exp.errors == [] and exp.types == {"x": typ}


def test_openmetrics_has_its_own_types_and_exemplars() -> None:
    text = ("# TYPE a gaugehistogram\n# TYPE b unknown\n# TYPE c untyped\n"
            'a_bucket{le="+Inf"} 5 # {trace_id="abc"} 0.5 1.25\n'
            "b 1 1700000000.5\nc 2\n# EOF\n")
    exp = parse(text)
    assert exp.types == {"a": "gaugehistogram", "b": "unknown"}
    assert exp.invalid_lines == 1 and "invalid metric type 'untyped'" in exp.errors[0]
    assert exp.samples["a_bucket"] == [('le="+Inf"', 5.0, None)]
    assert exp.samples["b"] == [("", 1.0, 1700000000.5)]


def test_spellings_prometheus_accepts_are_still_read() -> None:
    # The valid side of the same upstream tests: blanks and a tab before a timestamp,
    # bare and prefix-like comments, HELP without text, a trailing comma, blanks
    # inside braces, names and labels starting with "_", escaped quotes, a leading
    # blank, and the values Go and Python both spell.
    text = ("# HELP go_goroutines Number of goroutines that currently exist.\n"
            "# TYPE go_goroutines gauge\n"
            "go_goroutines 33  \t123123\n"
            "#\n# Hrandom comment starting with prefix of HELP\n# HELP nohelp1\n"
            'go_gc_duration_seconds{quantile="0.25",} 7.424100000000001e-05\n'
            'go_gc_duration_seconds { quantile = "1.0", a = "b" } 8.3835e-05\n'
            'some:aggregate:rate5m{a_b="c"}\t1\n'
            "_metric_starting_with_underscore 1\n"
            'testmetric{_label_starting_with_underscore="foo"} 1\n'
            'testmetric{label="\\"bar\\""} 1\n'
            " lead 0 0\n"
            "v NaN\nv nan\nv -Inf\nv +inf\nv Infinity\nv .5\nv 1.\nv -1E-3\n")
    exp = parse(text)
    assert exp.errors == []
    assert exp.samples["go_goroutines"] == [("", 33.0, 123.123)]
    assert exp.types == {"go_goroutines": "gauge"}
    assert exp.get("go_gc_duration_seconds") == [({"quantile": "0.25"}, 7.424100000000001e-05),
                                                 ({"quantile": "1.0", "a": "b"}, 8.3835e-05)]
    assert exp.get("testmetric")[1] == ({"label": '"bar"'}, 1.0)
    assert exp.samples["lead"] == [("", 0.0, 0.0)]
    got = [v for _, v, _ in exp.samples["v"]]
    assert math.isnan(got[0]) and math.isnan(got[1])
    assert got[2:] == [-math.inf, math.inf, math.inf, 0.5, 1.0, -0.001]


# ---------------------------------------------------------------- through the memo

_CLEAN = ("# HELP x A gauge.\n# TYPE x gauge\nx 1\n"
          '# TYPE y counter\ny_total{a="1"} 2\ny_total{a="2"} 3\n')


def _same(a: Exposition, b: Exposition) -> bool:
    return (a.samples == b.samples and a.types == b.types and a.helps == b.helps
            and a.errors == b.errors and a.invalid_lines == b.invalid_lines)


@pytest.mark.parametrize("changed", [
    _CLEAN.replace("x 1\n", "x 1. # 7954\n"),
    _CLEAN.replace('y_total{a="2"} 3\n', 'y_total{a="2"} 3 # {trace_id="t"} 1\n'),
    _CLEAN.replace("x 1\n", "x 1 1.5\n"),
    _CLEAN.replace("x 1\n", "x -NaN\n"),
    _CLEAN.replace("# TYPE x gauge", "# TYPE x gaugeeconds"),
    _CLEAN.replace("# TYPE y counter", "# TYPE y counter "),
])
def test_the_memo_of_a_clean_layout_lets_no_invalid_line_through(changed: str) -> None:
    memo = ParseMemo()
    for _ in range(3):  # learn the layout, then serve it from the memo
        got = memo.parse(_CLEAN.encode(), max_bytes=MAX, max_seconds=1.0, only=None)
        assert _same(got, parse(_CLEAN))
    assert memo.hits == 2
    got = memo.parse(changed.encode(), max_bytes=MAX, max_seconds=1.0, only=None)
    assert memo.hits == 2  # the changed payload was parsed in full ...
    assert got.invalid_lines == 1 and _same(got, parse(changed))  # ... and rejected there
    again = memo.parse(changed.encode(), max_bytes=MAX, max_seconds=1.0, only=None)
    assert again.invalid_lines == 1 and memo.hits == 2  # never learned as a layout
