"""``gpuwarden budget --config``: the page, the JSON and the chart from a config's store
(the scripted hour of ``tests/capacity/node.py``); ``--url`` against nothing listening.
The daemon's side (``--url`` against a real daemon) is in ``tests/api/test_budget_api.py``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gpuwarden.cli.main import main
from tests.capacity import node as scripted
from tests.daemon.test_daemon import free_port


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config whose store holds the scripted hour, ending now."""
    folder = tmp_path_factory.mktemp("budget-cli")
    url = scripted.node_store(folder / "gw.db", time.time())
    path = folder / "gw.toml"
    path.write_text(f'node = "{scripted.NODE}"\ninterval = "1m"\n[storage]\nurl = "{url}"\n')
    return path


def test_the_page_names_every_part_headroom_and_what_a_change_would_give(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["budget", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert ("GPU 0 NVIDIA H100 80GB HBM3: 80.0 GiB = KV cache 52.0 GiB (65 %) + server other "
            "18.0 GiB (22 %) + other processes 2.0 GiB (2 %) + free 8.0 GiB (10 %) - headroom "
            "10 % below the 15 % target") in out
    assert "GPU 1 NVIDIA H100 80GB HBM3: 80.0 GiB = KV cache 50.0 GiB" in out
    assert "headroom 18 % (target 15 %)" in out  # 14 of 80 GiB
    assert "server vllm-a (llama-8b) on node n1, GPU 0:" in out
    assert "server vllm-tp (llama-70b) on node n1, GPUs 1, 2:" in out
    # 30 GiB of KV + (0.85 - 0.45) x 80 GiB = 62 GiB: 200,000 x 62 / 30 tokens
    assert f"at gpu_memory_utilization 0.85: {int(200_000 * 62 / 30):,} tokens" in out
    assert ("at gpu_memory_utilization 0.85: n/a (server does not export "
            "kv_cache_memory_bytes)") in out
    assert "peak running + waiting over the last 10m: 180" in out
    assert "preemptions are coming" in out
    assert "request length over the last 1h: p50 928 tokens (prompt 768 + generation 160)" in out
    assert "cost per hour $2.50" in out


def test_json_is_the_budget(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["budget", "--config", str(config), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [g["gpu"] for g in doc["gpus"]] == ["0", "1", "2"]
    assert [s["server"] for s in doc["servers"]] == ["vllm-a", "vllm-b", "vllm-tp"]
    assert doc["gpus"][0]["parts"]["kv_cache"]["gib"] == 52.0
    assert doc["servers"][1]["what_if"] is None
    assert doc["windows"]["efficiency_seconds"] == 3600


def test_png_chart(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chart = tmp_path / "budget.png"
    assert main(["budget", "--config", str(config), "--chart", str(chart)]) == 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "GPU 0 NVIDIA H100" in capsys.readouterr().out  # the page is printed as well


def test_svg_chart_has_one_stacked_bar_per_gpu(config: Path, tmp_path: Path) -> None:
    chart = tmp_path / "budget.svg"
    assert main(["budget", "--config", str(config), "--chart", str(chart), "--json"]) == 0
    root = ET.parse(chart).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    ids = [e.get("id", "") for e in root.iter() if e.get("id", "").startswith("bar-")]
    for gpu in ("0", "1", "2"):
        assert sorted(i for i in ids if i.startswith(f"bar-n1-{gpu}-")) == sorted(
            f"bar-n1-{gpu}-{p}" for p in ("kv_cache", "server_other", "other_processes",
                                          "free"))
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert all(f"GPU {g}" in texts for g in "012")
    assert "52.0" in texts and "15 % headroom target" in texts


def test_a_chart_name_that_is_neither_png_nor_svg_is_exit_2(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["budget", "--config", str(config), "--chart", str(tmp_path / "b.pdf")]) == 2
    assert "must end in .png or .svg (got .pdf)" in capsys.readouterr().err
    assert not (tmp_path / "b.pdf").exists()


def test_a_broken_config_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('node = "n1"\ninterval = "soon"\n')
    assert main(["budget", "--config", str(bad)]) == 2
    assert "interval" in capsys.readouterr().err
    nowhere = tmp_path / "nowhere.toml"
    nowhere.write_text(f'node = "n1"\n[storage]\nurl = "sqlite:///{tmp_path}/no/such/gw.db"\n')
    assert main(["budget", "--config", str(nowhere)]) == 2
    assert "storage:" in capsys.readouterr().err


def test_a_daemon_that_does_not_answer_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["budget", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "not reachable" in capsys.readouterr().err


def test_the_command_line_does_not_load_the_budget_nor_matplotlib() -> None:
    """``gpuwarden run`` builds the whole parser: the budget costs it nothing."""
    code = ("import sys\nfrom gpuwarden.cli.main import build_parser\nbuild_parser()\n"
            "print(','.join(m for m in ('matplotlib', 'numpy', 'gpuwarden.capacity.budget', "
            "'gpuwarden.tools.budget') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == ""
