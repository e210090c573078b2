"""The budget's page and chart for what a store may lack: no GPU at all, a GPU without its
memory split (a daemon that does not compute it yet), several nodes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gpuwarden.tools.budget import format_text
from gpuwarden.tools.budget_chart import chart_format, write_chart

SVG = "{http://www.w3.org/2000/svg}"
REASON = 'the daemon stores no gpu_memory_budget_bytes{part="kv_cache"} for this GPU'


def bare_gpu(node: str, gpu: str) -> dict[str, object]:
    """A GPU known by its total only, as ``Budget.to_json`` writes it."""
    parts = {p: {"bytes": None, "gib": None, "percent": None}
             for p in ("kv_cache", "server_other", "other_processes", "free")}
    return {"node": node, "gpu": gpu, "uuid": f"GPU-{gpu}", "model": "NVIDIA L4",
            "total_bytes": 24 * 2.0**30, "total_gib": 24.0, "parts": parts,
            "headroom_ratio": None, "headroom_target_ratio": 0.15, "below_target": None,
            "peak_bandwidth_bytes_per_second": None, "cost_per_hour_usd": None,
            "servers": [], "missing": {"parts.kv_cache": REASON,
                                       "headroom_ratio": "no headroom in the store"}}


def doc(*gpus: dict[str, object]) -> dict[str, object]:
    return {"generated_at": 1_700_000_000.0, "node": None, "headroom_target_ratio": 0.15,
            "windows": {"lengths_seconds": 3600, "peak_seconds": 600,
                        "efficiency_seconds": 3600},
            "what_if_gpu_memory_utilization": 0.85, "gpus": list(gpus), "servers": []}


def test_an_empty_store_says_so() -> None:
    text = format_text(doc())
    assert "no GPU or server in the store" in text


def test_a_gpu_without_its_split_reads_na_with_the_reason() -> None:
    text = format_text(doc(bare_gpu("a", "0")))
    assert f"GPU 0 NVIDIA L4: 24.0 GiB = KV cache n/a ({REASON})" in text
    assert "headroom n/a (no headroom in the store)" in text


def test_several_nodes_are_told_apart(tmp_path: Path) -> None:
    both = doc(bare_gpu("a", "0"), bare_gpu("b", "0"))
    text = format_text(both)
    assert "[a] GPU 0" in text and "[b] GPU 0" in text
    chart = tmp_path / "nodes.svg"
    write_chart(both, chart)
    root = ET.parse(chart).getroot()
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "a GPU 0" in labels and "b GPU 0" in labels
    assert labels.count(" memory split n/a") == 2


def test_a_chart_of_nothing_is_still_a_file(tmp_path: Path) -> None:
    chart = tmp_path / "empty.png"
    write_chart(doc(), chart)
    assert chart.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["b.PNG", "x/b.svg"])
def test_chart_formats(name: str) -> None:
    assert chart_format(name) in ("png", "svg")


@pytest.mark.parametrize("name", ["b.jpg", "budget", "b.svg.gz"])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"must end in \.png or \.svg"):
        chart_format(name)
