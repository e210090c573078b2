"""The committed dashboards are exactly what the code generates, and are well formed.

A dashboard is data that users import; if someone edits the JSON by hand or renames a
signal without regenerating, this is the test that says so (regenerate with
``gpuwarden dashboards export --out dashboards``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gpuwarden.signals import SIGNALS
from gpuwarden.tools import dashboards as d
from gpuwarden.tools import grafana

REPO = Path(__file__).resolve().parent.parent.parent
COMMITTED = REPO / "dashboards"


def panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in model["panels"] if p["type"] != "row"]


def test_committed_files_are_the_generated_ones() -> None:
    generated = {name: grafana.to_json(dash) for name, dash in d.all_dashboards().items()}
    committed = {p.name: p.read_text(encoding="utf-8") for p in COMMITTED.glob("*.json")}
    assert set(committed) == set(generated), "regenerate: gpuwarden dashboards export"
    for name, text in generated.items():
        assert committed[name] == text, f"{name} is stale: gpuwarden dashboards export"


def test_generation_is_deterministic() -> None:
    assert [grafana.to_json(x) for x in d.all_dashboards().values()] == \
           [grafana.to_json(x) for x in d.all_dashboards().values()]


@pytest.mark.parametrize("name", sorted(d.DASHBOARDS))
def test_dashboard_model(name: str) -> None:
    model = json.loads((COMMITTED / name).read_text())
    assert model["uid"] == name.removesuffix(".json") and len(model["uid"]) <= 40
    assert model["schemaVersion"] == grafana.SCHEMA_VERSION and model["id"] is None
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["node"]["query"]["query"].startswith("label_values(")
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(model):
        assert panel["datasource"] == grafana.DS and panel["targets"], panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for target in panel["targets"]:
            assert target["datasource"] == grafana.DS
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= set(variables), (panel["title"], used)


def test_units_and_slo_lines() -> None:
    by_title = {p["title"]: p for name in d.DASHBOARDS
                for p in panels(json.loads((COMMITTED / name).read_text()))}

    def steps(title: str) -> list[float]:
        defaults = by_title[title]["fieldConfig"]["defaults"]
        return [s["value"] for s in defaults["thresholds"]["steps"][1:]]

    def unit(title: str) -> str:
        return str(by_title[title]["fieldConfig"]["defaults"]["unit"])

    assert steps("TTFT p95 by server") == [2.0] and unit("TTFT p95 by server") == "s"
    assert steps("Inter-token latency p95 by server") == [0.13]
    assert steps("KV-cache usage by server") == [0.9]
    assert unit("KV-cache usage by server") == "percentunit"
    assert steps("Answer quality (canary similarity)") == [0.92]
    assert unit("Power vs limit") == "watt" and unit("SM clock") == "hertz"
    assert unit("Temperature") == "celsius" and unit("Memory used of total") == "bytes"
    assert "predict_linear(" in by_title["KV-cache usage and 5-minute forecast"][
        "targets"][1]["expr"]


def test_queries_only_name_catalogue_or_self_metrics() -> None:
    known = {d.PREFIX + s for s in SIGNALS} | {d.PREFIX + s for s in d.SELF_METRICS}
    for dash in d.all_dashboards().values():
        for where, expr in dash.queries():
            for name in re.findall(r"\bgpuwarden_\w+", expr):
                assert name in known, (dash.uid, where, name)


def test_unknown_names_fail_loudly() -> None:
    with pytest.raises(KeyError):
        d.metric("kv_cache_usage_percent")
    with pytest.raises(KeyError):
        d.selfm("cycle_seconds")
    with pytest.raises(ValueError, match="quantile"):
        d.metric("ttft_seconds")
