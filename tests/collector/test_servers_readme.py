"""The README's server mapping table says what the tables map, kind by kind.

A row whose cell for a kind says "not exposed" must be a signal that kind's table does
not map, and a cell that names a metric must name one the table reads, so the table and
the documentation cannot drift apart unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

from gpuwarden.collector.registry import SERVER_KINDS
from gpuwarden.signals import SERVER_LABELS, SIGNALS

README = Path(__file__).resolve().parents[2] / "README.md"
HEADER = "| signal | vLLM | SGLang | TGI | Triton / TensorRT-LLM | llama.cpp |"
KINDS = ("vllm", "sglang", "tgi", "triton", "llamacpp")


def mapping_rows() -> list[list[str]]:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(HEADER) + 2  # past the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def first_name(cell: str) -> str:
    return re.findall(r"`([^`]+)`", cell)[0].split("{")[0]


def test_every_mapped_signal_has_a_row_and_every_cell_matches_its_table() -> None:
    rows = mapping_rows()
    assert rows and all(len(r) == 1 + len(KINDS) for r in rows)
    documented = {name for r in rows for name in re.findall(r"`([^`]+)`", r[0])}
    for kind in KINDS:
        mapping = SERVER_KINDS.load(kind)
        assert set(mapping.signals) <= documented, kind
        for row in rows:
            signal = first_name(row[0])
            assert SIGNALS[signal].labels == SERVER_LABELS, signal
            cell = row[1 + KINDS.index(kind)]
            if cell.startswith("not exposed"):
                assert signal not in mapping.signals, (kind, signal)
            else:
                assert signal in mapping.signals, (kind, signal, cell)
                assert first_name(cell) in mapping.read_names, (kind, signal, cell)
