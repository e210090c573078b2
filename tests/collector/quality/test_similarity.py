"""Calibration of the default similarity on the labelled pairs (tests/fixtures/quality).

Paraphrases (verbatim and close rewordings of a reference) must score >= 0.95;
unrelated answers and degenerate ones (repetition, gibberish, word salad, truncation,
wrong language) < 0.8. The figures are printed with ``-s`` for the record.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuwarden.collector.quality.similarity import breakdown, calibrate, embed, similarity

PAIRS = Path(__file__).resolve().parents[2] / "fixtures" / "quality" / "similarity-pairs.jsonl"
ROWS = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()]
LABELS = {"paraphrase", "unrelated", "repetition", "gibberish", "truncation", "wrong_language"}


def test_pairs_file_covers_every_label() -> None:
    assert {r["label"] for r in ROWS} == LABELS
    assert len(ROWS) >= 100


def test_calibration_separates_good_from_bad() -> None:
    good = [similarity(r["answer"], r["reference"]) for r in ROWS if r["label"] == "paraphrase"]
    bad: dict[str, list[float]] = {}
    for r in ROWS:
        if r["label"] != "paraphrase":
            bad.setdefault(r["label"], []).append(similarity(r["answer"], r["reference"]))
    worst_bad = max(max(v) for v in bad.values())
    print(f"\nmin paraphrase {min(good):.3f}; max bad {worst_bad:.3f}; "
          + ", ".join(f"{k} max {max(v):.3f}" for k, v in sorted(bad.items())))
    assert min(good) >= 0.95
    assert worst_bad < 0.8


def test_unrelated_references_cross() -> None:
    refs = sorted({r["reference"] for r in ROWS})
    assert max(similarity(a, b) for a in refs for b in refs if a != b) < 0.8


@pytest.mark.parametrize("label", sorted(LABELS - {"paraphrase"}))
def test_each_degenerate_kind_is_caught_by_its_factor(label: str) -> None:
    """Not just a low cosine: the penalty meant for the failure does the work."""
    factor = {"repetition": "repetition", "truncation": "length"}.get(label)
    for r in ROWS:
        if r["label"] == label and factor is not None:
            assert getattr(breakdown(r["answer"], r["reference"]), factor) < 0.9


def test_edge_cases() -> None:
    assert similarity("", "") == 1.0
    assert similarity("", "reference") == 0.0
    assert similarity("Paris.", "") == 0.0
    assert similarity("  The   Capital\u00a0is Paris ", "the capital is paris") == 1.0
    assert calibrate(0.0) == 0.0 and calibrate(1.0) == 1.0
    assert all(calibrate(a / 100) <= calibrate((a + 1) / 100) for a in range(100))


def test_deterministic_across_processes() -> None:
    """crc32, not Python's salted hash: another interpreter gets the same vector."""
    text = "The capital of France is Paris."
    code = ("from gpuwarden.collector.quality.similarity import embed; "
            f"v = embed({text!r}); print(sorted(v)[:5])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123"}).stdout.strip()
    assert out == str(sorted(embed(text))[:5])


def test_fast_enough_for_a_canary_round() -> None:
    started = time.perf_counter()
    for r in ROWS:
        similarity(r["answer"], r["reference"])
    per_pair = (time.perf_counter() - started) / len(ROWS)
    assert per_pair < 0.02  # ~1 ms here; the collector scores one answer per slot
