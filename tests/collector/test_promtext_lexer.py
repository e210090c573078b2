"""Tests of the line grammar under the Prometheus text parser: label sets, timestamps,
HELP escapes and the explanation of a rejected line (the parse as a whole, against
prometheus_client, is tested in test_promtext.py)."""

from __future__ import annotations

import pytest

from gpuwarden.collector.promtext_lexer import (
    MAX_LINE_CHARS,
    diagnose,
    parse_label_set,
    parse_labels,
    snippet,
    timestamp_seconds,
    unescape_help,
)


def test_parse_labels() -> None:
    assert parse_labels("") == {}
    assert parse_labels('a="1", b="2",') == {"a": "1", "b": "2"}
    assert parse_labels(' a = "1" ') == {"a": "1"}
    assert parse_labels('a="\\t"') == {"a": "\\t"}  # unknown escape kept, as prometheus_client
    first = parse_labels('k="v"')
    first["k"] = "mutated"
    assert parse_labels('k="v"') == {"k": "v"}  # cached, but callers get copies
    for bad in ('a="1",a="2"', 'a=1', 'a="x', '="x"', 'a="1",,b="2"', "garbage"):
        with pytest.raises(ValueError):
            parse_labels(bad)


def test_parse_label_set_is_uncached_and_says_why_it_fails() -> None:
    assert parse_label_set('a="x\\"y"') == {"a": 'x"y'}
    with pytest.raises(ValueError, match="duplicate label name 'a'"):
        parse_label_set('a="1",a="2"')
    with pytest.raises(ValueError, match="malformed label set"):
        parse_label_set("a=1")


def test_timestamps_are_milliseconds_in_text_and_seconds_in_openmetrics() -> None:
    assert timestamp_seconds("1700000000500", openmetrics=False) == 1700000000.5
    assert timestamp_seconds("0001500", openmetrics=False) == 1.5
    # Prometheus reads text timestamps as int64 milliseconds: the largest one converts,
    # one more is out of range (a 400-digit one used to overflow the division).
    assert timestamp_seconds(str(2**63 - 1), openmetrics=False) == (2**63 - 1) / 1000
    for too_big in (str(2**63), "9" * 400):
        with pytest.raises(ValueError, match="out of range"):
            timestamp_seconds(too_big, openmetrics=False)
    assert timestamp_seconds("1700000000.5", openmetrics=True) == 1700000000.5
    assert timestamp_seconds("-1.5e3", openmetrics=True) == -1500.0


def test_help_escapes_differ_between_the_formats() -> None:
    assert unescape_help("a\\nb \\\\ \\\"", openmetrics=False) == 'a\nb \\ \\"'
    assert unescape_help("a\\nb \\\\ \\\"", openmetrics=True) == 'a\nb \\ "'


@pytest.mark.parametrize(("line", "why"), [
    ("<html><body>502</body></html>", "not a sample line (HTML/JSON?)"),
    ('{"error": "x"}', "not a sample line (HTML/JSON?)"),
    ("9bad 1", "invalid metric name"),
    ("m-x 1", "invalid metric name"),
    ('m{a="1" 2', "malformed or unterminated label set"),
    ("m", "missing value"),
    ("m 1 2 3", "unexpected text after value"),
    ("m 1 x", "invalid value or timestamp"),
    ("m 1 # {a=\"b\"} 1", "'#' after the value (an exemplar or comment: OpenMetrics only"),
    ("m 1 1000 # c", "'#' after the value"),
    ("m 1 -5", "timestamp '-5' is not integer milliseconds"),
    ("m 1 1.5e3", "timestamp '1.5e3' is not integer milliseconds"),
    ("m one", "m: invalid value 'one'"),
])
def test_a_rejected_line_is_explained(line: str, why: str) -> None:
    assert diagnose(line).startswith(why)


def test_snippets_are_bounded() -> None:
    long = "x" * MAX_LINE_CHARS
    assert len(snippet(long)) < 100 and snippet(long).endswith("...'")
