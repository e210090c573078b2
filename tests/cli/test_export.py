"""``gpuwarden dashboards export`` and ``gpuwarden rules export``: the files an installed
package writes (what they contain is tested in ``tests/tools/``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gpuwarden.cli.export import add_commands
from gpuwarden.tools import dashboards as d


def test_dashboards_export_writes_every_dashboard(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dashboards", "export", "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(d.DASHBOARDS)
    assert capsys.readouterr().out.count(".json") == len(d.DASHBOARDS)


def test_rules_export_with_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'node = "n1"\n[storage]\nurl = "sqlite:///{tmp_path}/gw.db"\n'
                      '[[rules]]\nname = "HotGPU"\nsignal = "gpu_temperature_celsius"\n'
                      'threshold = 87\nfor = "1m"\nseverity = "critical"\n')
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rules", "export", "--config", str(config)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "- alert: HotGPU" in out and "expr: 'gpuwarden_gpu_temperature_celsius > 87'" in out
    assert "severity: 'critical'" in out

    config.write_text('node = "n1"\n[[rules]]\nname = "X"\nsignal = "nope"\nthreshold = 1\n')
    args = parser.parse_args(["rules", "export", "--config", str(config)])
    assert args.func(args) == 2
    assert "rules[0].signal" in capsys.readouterr().err
